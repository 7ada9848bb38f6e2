//! Rebuilds the library when a recorded fixture changes: `include_dir!` embeds
//! `fixtures/exchange` for the built-in simulator, and stable Rust cannot track that folder.

fn main() {
    println!("cargo:rerun-if-changed=fixtures/exchange");
}
