//! Integration tests: each drives the real binary in a hermetic temp environment; those that
//! need the Qwen service talk to the mock in `util::mock` on 127.0.0.1.

mod util;

mod claude;
mod clients;
mod core;
mod doctor;
mod headers;
mod keep;
mod keys;
mod oauth;
mod opencode;
mod pools;
mod qwen_cli;
mod robustness;
mod rotation;
mod serve;
mod shell;
mod steer;
mod terminal;
