//! Entry points shared by the `cargo fuzz` targets in `fuzz/` and the corpus replay in the test
//! suite: the inputs an administrator or a client can shape — an observation as `POST /explain`
//! takes it, and a directory document. Each must never panic on any input.

use std::sync::OnceLock;

use super::{Engine, MemoryLimits, Mode, RulesLimits};
use crate::directory::{DirectoryHandle, FileSource, file::parse_and_build};
use crate::inspect::Observation;

fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let directory = FileSource::embedded().load().ok()?;
            Some(Engine::new(
                DirectoryHandle::new(directory),
                MemoryLimits {
                    max_bytes: 8 << 20,
                    max_tracked: 10_000,
                },
                RulesLimits::default(),
            ))
        })
        .as_ref()
}

/// Observations (one JSON object, or an array), decided in every mode over the example
/// directory; the memory carries over between inputs, as it does in the gateway.
pub fn observations(data: &[u8]) {
    let Some(engine) = engine() else { return };
    let parsed: Vec<Observation> = match serde_json::from_slice::<Vec<Observation>>(data) {
        Ok(list) => list,
        Err(_) => match serde_json::from_slice::<Observation>(data) {
            Ok(one) => vec![one],
            Err(_) => return,
        },
    };
    for o in parsed.iter().take(1000) {
        for mode in [Mode::EXPLAIN, Mode::REPLAY, Mode::APPLY] {
            for d in engine.decide(o, mode) {
                let _ = serde_json::to_vec(&d);
            }
        }
    }
}

/// A directory document, read as TOML and as JSON.
pub fn directory(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = parse_and_build(&text, "fuzz", false);
    let _ = parse_and_build(&text, "fuzz", true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_targets_decide_over_the_example_directory() {
        let engine = engine().expect("the example directory loads");
        let (items, _, _) = engine.memory().entry_counts();
        let seen = Observation::MessageSeen {
            origin: crate::inspect::Origin {
                mailbox: Some("alex.seller@contoso.example".into()),
                source: crate::inspect::Source::Ews,
                operation: "GetItem".into(),
            },
            message: crate::inspect::Message {
                item_id: Some("fuzz-1".into()),
                folder: Some("inbox".into()),
                internet_message_id: Some("<fuzz-1@x>".into()),
                ..crate::inspect::Message::default()
            }
            .into(),
            initial_sync: false,
        };
        observations(&serde_json::to_vec(&seen).expect("an observation encodes"));
        let (after, _, _) = engine.memory().entry_counts();
        assert!(after > items, "the observation was decided and remembered");
    }
}
