//! `qwen-cred opencode install`: being written (issue 6).

use crate::cli::Opencode;
use crate::config::Config;
use crate::error::{Error, Result};

pub fn run(_cfg: &Config, _args: &Opencode) -> Result<()> {
    Err(Error::Internal("opencode install is not written yet".into()))
}
