//! Integration tests: each drives the real binary in a hermetic temp environment; those that
//! need the Qwen service talk to the mock in `util::mock` on 127.0.0.1.

mod util;

mod core;
mod keep;
mod keys;
mod oauth;
mod opencode;
mod qwen_cli;
mod robustness;
mod rotation;
mod serve;
mod terminal;
