//! Integration tests: each drives the real binary in a hermetic temp environment; those that
//! need the Qwen service talk to the mock in `util::mock` on 127.0.0.1.

mod util;

mod core;
mod doctor;
mod keep;
mod oauth;
mod opencode;
mod qwen_cli;
mod robustness;
mod rotation;
mod serve;
mod shell;
mod steer;
mod terminal;
