//! What a person at a terminal sees: the full-pool question of `login`, and the countdown of
//! `token` while every account cools down, with Ctrl-C ending it cleanly. Driven under a
//! private tmux server.

use crate::util::mock::Mock;
use crate::util::{self, program, store_with, Env};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A tmux server of its own (socket in the test's temp dir) running one command (also used
/// by keys.rs for the no-echo prompt).
pub(crate) struct Tmux<'a> {
    env: &'a Env,
    tmux: PathBuf,
}

impl<'a> Tmux<'a> {
    /// Starts `script` (sh) in a detached session; `None` when tmux is not installed.
    pub(crate) fn start(env: &'a Env, script: &str) -> Option<Tmux<'a>> {
        let t = Tmux {
            env,
            tmux: program("QWEN_CRED_TEST_TMUX", "tmux")?,
        };
        let o = t.cmd(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "30",
            "sh",
            "-c",
            script,
        ]);
        assert!(o.status.success(), "tmux: {}", util::text(&o.stderr));
        Some(t)
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        let socket = self.env.root.join("tmux.sock");
        let mut c = self.env.command(&self.tmux);
        c.arg("-S").arg(socket).args(["-f", "/dev/null"]).args(args);
        c.output().expect("run tmux")
    }

    pub(crate) fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        self.cmd(&args);
    }

    /// Polls the screen until it shows `what`; panics with the screen after `secs`.
    pub(crate) fn wait_for(&self, what: &str, secs: u64) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = util::text(&self.cmd(&["capture-pane", "-p", "-J", "-t", "t"]).stdout);
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < end,
                "the screen never showed {what:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux<'_> {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn a_full_pool_asks_which_account_to_replace() {
    let mock = Mock::start();
    let env = Env::with_mock(&mock);
    env.write_store(&store_with(10));
    mock.push_approval(mock.approval(Some("new@example.com")));
    let script = format!(
        "'{}' login --no-browser; echo \"exit: $?\"; sleep 60",
        util::BIN
    );
    let Some(t) = Tmux::start(&env, &script) else {
        return;
    };
    t.wait_for("Type the id of an account to replace", 30);
    assert!(
        mock.requests().is_empty(),
        "no device flow before the answer"
    );
    t.keys(&["4", "Enter"]);
    let screen = t.wait_for("exit: ", 30);
    assert!(
        screen.contains("signed in account 4 (new@example.com)"),
        "{screen}"
    );
    assert!(screen.contains("exit: 0"), "{screen}");
    let s = env.read_store();
    assert_eq!(s["accounts"].as_array().map(Vec::len), Some(10));
    assert_eq!(s["accounts"][3]["email"], "new@example.com");
}

#[test]
fn the_wait_for_a_cooldown_counts_down_and_ctrl_c_ends_it() {
    let mut env = Env::new();
    env.set("QWEN_CRED_MAX_RATE_LIMIT_WAIT_SECONDS", "600");
    let mut s = store_with(2);
    for i in 0..2 {
        s["accounts"][i]["rate_limit_resets_at"] = json!(util::now_ms() + 300_000);
    }
    env.write_store(&s);
    let before = std::fs::read(env.store_path()).expect("read");
    // The shell around it traps Ctrl-C (so it lives on to print the status); qwen-cred, its
    // child, gets the default SIGINT.
    let script = format!(
        "trap 'echo trapped' INT; '{}' token; echo \"exit: $?\"; sleep 60",
        util::BIN
    );
    let Some(t) = Tmux::start(&env, &script) else {
        return;
    };
    let screen = t.wait_for("s left", 30);
    assert!(
        screen.contains("every usable account is cooling down; waiting"),
        "{screen}"
    );
    t.keys(&["C-c"]);
    let screen = t.wait_for("exit: ", 30);
    assert!(
        screen.contains("exit: 130"),
        "ended at once by SIGINT: {screen}"
    );
    assert_eq!(
        std::fs::read(env.store_path()).expect("read"),
        before,
        "nothing half-done"
    );
}
