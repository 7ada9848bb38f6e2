//! The direction of the flow, proved from the code: every `crate::…` path in `src/` (in `use`
//! lines and inline, unit tests excepted) is checked against the layers below. A stage never
//! imports a later stage; the directory (the replica beside the flow) imports no stage;
//! configuration and the shared leaves import no stage and nothing that wires stages; and only
//! the composition modules may use the simulators. A failure names the file, the line and the
//! rule.

use std::path::{Path, PathBuf};

/// The stages, in flow order (docs/architecture.md §1): each may use those before it.
const STAGES: [&str; 11] = [
    "proxy",
    "inspect",
    "directory",
    "rules",
    "outbox",
    "fleet",
    "exchange",
    "catchup",
    "crm",
    "delivery",
    "sync",
];
/// Imported by anything, importing only each other.
const LEAVES: [&str; 4] = ["common", "tls", "telemetry", "oauth"];
/// Validated configuration: imports only the leaves; no stage imports it.
const CONFIG: &str = "config";
/// What wires the stages together or runs them as commands. They may use every module,
/// including the simulators: the embedded default runs the built-in Exchange simulator
/// (docs/architecture.md §2.10), the demo runs both, and replay reads recorded fixtures.
const COMPOSITION: [&str; 8] = [
    "pipeline", "app", "admin", "options", "ops", "demo", "replay", "simulate",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Leaf,
    Config,
    Stage(usize),
    Composition,
}

fn layer(module: &str) -> Option<Layer> {
    if LEAVES.contains(&module) {
        Some(Layer::Leaf)
    } else if module == CONFIG {
        Some(Layer::Config)
    } else if let Some(rank) = STAGES.iter().position(|s| *s == module) {
        Some(Layer::Stage(rank))
    } else if COMPOSITION.contains(&module) {
        Some(Layer::Composition)
    } else {
        None
    }
}

/// Why `from` may not import `to`, if it may not.
fn forbidden(from: &str, to: &str) -> Option<String> {
    if from == to {
        return None;
    }
    let (Some(a), Some(b)) = (layer(from), layer(to)) else {
        return Some(format!(
            "`{}` is in no layer: add it to tests/architecture.rs",
            if layer(from).is_none() { from } else { to }
        ));
    };
    match (a, b) {
        (Layer::Composition, _) => None,
        (_, Layer::Composition) if to == "simulate" => Some(format!(
            "{from} imports the simulators; only {COMPOSITION:?} may"
        )),
        (_, Layer::Composition) => Some(format!(
            "{from} imports `{to}`, which wires stages together; only the composition may"
        )),
        (_, Layer::Leaf) => None,
        (Layer::Leaf, _) => Some(format!("the leaf `{from}` imports `{to}`")),
        (Layer::Config, _) => Some(format!(
            "configuration imports `{to}`; it is a leaf (app::settings maps it to stage settings)"
        )),
        (Layer::Stage(_), Layer::Config) => Some(format!(
            "the stage `{from}` imports the configuration; take its own settings type instead"
        )),
        (Layer::Stage(_), Layer::Stage(_)) if from == "directory" => Some(format!(
            "the directory imports the stage `{to}`; the replica depends on no stage"
        )),
        (Layer::Stage(x), Layer::Stage(y)) if y > x => {
            Some(format!("the stage `{from}` imports the later stage `{to}`"))
        }
        _ => None,
    }
}

/// The top-level modules a line names through `crate::`, both `crate::a::…` and
/// `crate::{a, b::…}`. A group's braces may span lines; `pending` carries it over.
fn named_modules(line: &str, pending: &mut Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut text = match pending.take() {
        Some(open) => open + " " + line,
        None => line.to_owned(),
    };
    // Comments name modules without importing them.
    if let Some(comment) = text.find("//") {
        text.truncate(comment);
    }
    let mut rest = text.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `mycrate::` or `$crate::`-like, not ours
        }
        if let Some(group) = after.strip_prefix('{') {
            match matching_brace(group) {
                Some(end) => out.extend(top_level_names(&group[..end])),
                None => {
                    *pending = Some(format!("crate::{{{group}"));
                    return out;
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

fn matching_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn top_level_names(group: &str) -> Vec<String> {
    let (mut names, mut depth, mut at_start) = (Vec::new(), 0usize, true);
    let mut current = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                if !current.is_empty() {
                    names.push(std::mem::take(&mut current));
                }
                at_start = true;
                continue;
            }
            _ => {}
        }
        if depth == 0 && at_start {
            if c.is_alphanumeric() || c == '_' {
                current.push(c);
                continue;
            }
            if !current.is_empty() {
                names.push(std::mem::take(&mut current));
                at_start = false;
            }
        }
    }
    if !current.is_empty() {
        names.push(current);
    }
    names.retain(|n| n != "self");
    names
}

/// Every violation in one file's text, as `path:line: rule`.
fn check_file(display: &str, module: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut in_unit_tests = false;
    let mut pending = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim() == "#[cfg(test)]" {
            in_unit_tests = true;
        }
        if in_unit_tests {
            // Unit tests close with the module's brace at the start of a line.
            in_unit_tests = line != "}";
            continue;
        }
        for named in named_modules(line, &mut pending) {
            if let Some(rule) = forbidden(module, &named) {
                problems.push(format!("{display}:{}: {rule}", i + 1));
            }
        }
    }
    problems
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_import_follows_the_flow() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in &files {
        let relative = path.strip_prefix(&src).expect("under src/");
        let first = relative.components().next().expect("a path");
        let module = first.as_os_str().to_string_lossy();
        let module = module.trim_end_matches(".rs");
        if module == "main" || module == "lib" {
            continue; // the binary names the library as `trackgate::`; lib.rs only lists modules
        }
        let text = std::fs::read_to_string(path).expect("a readable source file");
        problems.extend(check_file(
            &format!("src/{}", relative.display()),
            module,
            &text,
        ));
        checked += 1;
    }
    assert!(checked > 50, "only {checked} files found under {src:?}");
    assert!(
        problems.is_empty(),
        "imports against the flow:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_catches_each_kind_of_violation() {
    let text = "use crate::proxy::Capture;\n\
                use crate::{common, delivery::Delivery};\n\
                fn f() { crate::config::Config::embedded(); }\n\
                use crate::{\n    simulate::fixtures,\n    rules,\n};\n\
                // crate::app is only named in a comment\n\
                #[cfg(test)]\nmod tests {\n    use crate::simulate::ntlm;\n}\n";
    let found = check_file("src/outbox/x.rs", "outbox", text);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with("src/outbox/x.rs:2:") && found[0].contains("later stage `delivery`")
    );
    assert!(found[1].starts_with("src/outbox/x.rs:3:") && found[1].contains("configuration"));
    assert!(found[2].starts_with("src/outbox/x.rs:7:") && found[2].contains("simulators"));

    assert!(forbidden("config", "proxy").is_some());
    assert!(forbidden("config", "common").is_none());
    assert!(forbidden("directory", "inspect").is_some());
    assert!(forbidden("delivery", "rules").is_none());
    assert!(forbidden("common", "tls").is_none());
    assert!(forbidden("tls", "config").is_some());
    assert!(forbidden("app", "simulate").is_none());
    assert!(forbidden("rules", "pipeline").is_some());
    assert!(forbidden("newthing", "common").is_some());
}
