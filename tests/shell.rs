//! The shell: usage errors that say what to do, `-h`, and the completion scripts, loaded in
//! the real shells.

use crate::util::{self, store_with, text, Env};

#[test]
fn usage_errors_name_the_nearest_command_or_flag_and_the_help() {
    let env = Env::new();
    for (args, words) in [
        (
            &["tokn"][..],
            &[
                "unknown command `tokn`",
                "did you mean `token`?",
                "qwen-cred help token",
            ][..],
        ),
        (&["stauts"], &["did you mean `status`?"]),
        (
            &["token", "--acount", "1"],
            &[
                "unknown flag `--acount`",
                "did you mean `--account`?",
                "qwen-cred help token",
            ],
        ),
        (
            &["opencode", "instal"],
            &["did you mean `install`?", "qwen-cred help opencode install"],
        ),
        (
            &["opencode", "install", "--dry"],
            &[
                "did you mean `--dry-run`?",
                "qwen-cred help opencode install",
            ],
        ),
        (
            &["list", "json"],
            &["unexpected argument `json`", "did you mean `--json`?"],
        ),
        (
            &["--verson"],
            &["did you mean `--version`?", "qwen-cred help"],
        ),
        (&["help", "tokn"], &["did you mean `token`?"]),
        (
            &["frobnicate"],
            &[
                "unknown command `frobnicate`",
                "run `qwen-cred help` for the commands",
            ],
        ),
        (&["use"], &["id", "see `qwen-cred help use`"]),
        (
            &["completions", "tcsh"],
            &["bash, zsh or fish", "see `qwen-cred help completions`"],
        ),
    ] {
        let (out, err) = env.expect(args, 2);
        assert_eq!(out, "", "{args:?}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {w:?} missing in {err}");
        }
        assert!(err.lines().all(|l| l.starts_with("qwen-cred: ")), "{err}");
    }
    let (_, err) = env.expect(&["frobnicate"], 2);
    assert!(!err.contains("did you mean"), "no wild guesses: {err}");
}

#[test]
fn dash_h_works_like_dash_dash_help() {
    let env = Env::new();
    let (top, _) = env.expect(&["--help"], 0);
    assert_eq!(env.expect(&["-h"], 0).0, top);
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    assert!(commands.len() > 10, "{top}");
    for c in commands
        .iter()
        .map(String::as_str)
        .chain(["opencode install"])
    {
        let mut args: Vec<&str> = c.split(' ').collect();
        let mut long = args.clone();
        long.push("--help");
        args.push("-h");
        let (help, _) = env.expect(&long, 0);
        assert_eq!(env.expect(&args, 0).0, help, "{c}");
        assert!(help.starts_with("Usage: qwen-cred"), "{help}");
    }
    // As an option's value, -h stays a value: here a label that is refused for its dash.
    let (_, err) = env.expect(&["login", "--label", "-h"], 2);
    assert!(err.contains("must not start with -"), "{err}");
}

/// An environment with two accounts and `qwen-cred` on PATH, as a user's shell has it.
fn shell_env() -> Env {
    let mut env = Env::new();
    let bin = env.root.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::os::unix::fs::symlink(util::BIN, bin.join("qwen-cred")).expect("symlink");
    env.set(
        "PATH",
        &format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    let mut s = store_with(2);
    s["accounts"]
        .as_array_mut()
        .expect("accounts")
        .push(util::account("7", "at-7", "rt-7", 7200));
    env.write_store(&s);
    env
}

fn script(env: &Env, shell: &str) -> std::path::PathBuf {
    let (out, _) = env.expect(&["completions", shell], 0);
    let path = env.root.join(format!("completion.{shell}"));
    std::fs::write(&path, out).expect("write script");
    path
}

/// Runs `program -c code`, asserting it succeeds quietly on stderr; returns stdout.
fn run(env: &Env, program: &std::path::Path, args: &[&str], code: &str) -> String {
    let o = env
        .command(program)
        .args(args)
        .arg("-c")
        .arg(code)
        .output()
        .expect("run shell");
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}",
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Each case: the words typed (the last is being completed), what must be offered, and what
/// must not.
const CASES: &[(&str, &[&str], &[&str])] = &[
    ("qwen-cred to", &["token"], &["list"]),
    (
        "qwen-cred ",
        &[
            "token",
            "report-429",
            "status",
            "doctor",
            "completions",
            "label",
            "help",
        ],
        &[],
    ),
    ("qwen-cred token --a", &["--account"], &["--format"]),
    (
        "qwen-cred token --account ",
        &["1", "2", "7"],
        &["--account"],
    ),
    ("qwen-cred token --format j", &["json"], &["raw"]),
    ("qwen-cred use ", &["1", "2", "7"], &[]),
    ("qwen-cred reset ", &["7"], &[]),
    ("qwen-cred remove 1 ", &["2", "7"], &[]),
    ("qwen-cred label 2 ", &[], &["7"]),
    ("qwen-cred opencode i", &["install"], &[]),
    ("qwen-cred opencode install --w", &["--write-config"], &[]),
    ("qwen-cred completions z", &["zsh"], &[]),
    ("qwen-cred help st", &["status"], &[]),
    ("qwen-cred doctor --o", &["--online"], &[]),
    ("qwen-cred --v", &["--version"], &[]),
];

/// Checks one shell's answers: the lines `WORDS => CANDIDATES` of `out`, one per case.
fn check(shell: &str, out: &str) {
    let answers: Vec<&str> = out.lines().filter(|l| l.contains(" =>")).collect();
    assert_eq!(answers.len(), CASES.len(), "{shell}: {out}");
    for (line, (typed, want, not)) in answers.iter().zip(CASES) {
        assert!(
            line.starts_with(typed.trim_end()),
            "{shell}: {line} for [{typed}]"
        );
        let got: Vec<&str> = line
            .split_once("=>")
            .map_or("", |(_, c)| c)
            .split_whitespace()
            .collect();
        // zsh filters by the typed prefix itself (compsys); do the same here.
        let prefix = typed.rsplit(' ').next().unwrap_or("");
        let got: Vec<&str> = got.into_iter().filter(|c| c.starts_with(prefix)).collect();
        for w in *want {
            assert!(got.contains(w), "{shell}: [{typed}] lacks {w}: {got:?}");
        }
        for w in *not {
            assert!(!got.contains(w), "{shell}: [{typed}] offers {w}: {got:?}");
        }
    }
}

#[test]
fn bash_completion_offers_commands_flags_and_account_ids() {
    let Some(bash) = util::program("QWEN_CRED_TEST_BASH", "bash") else {
        return;
    };
    let env = shell_env();
    let path = script(&env, "bash");
    let mut code = format!(
        "source '{}'\nt() {{ COMP_WORDS=(\"$@\"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=(); _qwen_cred; echo \"$* => ${{COMPREPLY[*]}}\"; }}\n",
        path.display()
    );
    for (typed, _, _) in CASES {
        let mut words: Vec<String> = typed.split(' ').map(|w| format!("'{w}'")).collect();
        if typed.ends_with(' ') {
            words.pop();
            words.push("''".into());
        }
        code += &format!("t {}\n", words.join(" "));
    }
    code += "complete -p qwen-cred\n";
    let out = run(&env, &bash, &["--norc", "--noprofile"], &code);
    assert!(out.contains("complete -F _qwen_cred qwen-cred"), "{out}");
    check("bash", &out);
}

#[test]
fn zsh_completion_offers_commands_flags_and_account_ids() {
    let Some(zsh) = util::program("QWEN_CRED_TEST_ZSH", "zsh") else {
        return;
    };
    let env = shell_env();
    let path = script(&env, "zsh");
    // compsys itself needs a terminal; its builtins are stood in for by functions that print
    // what they were given, and the script is loaded as `source <(...)` loads it.
    let mut code = format!(
        "typeset -g registered\ncompdef() {{ registered=\"$*\" }}\ncompadd() {{ if [[ $1 == -a ]]; then print -r -- \"${{(P@)2}}\"; else [[ $1 == -- ]] && shift; print -r -- \"$@\"; fi }}\n_describe() {{ print -r -- \"${{(P@)2%%:*}}\" }}\n_files() {{ print -r -- FILES }}\nsource '{}'\nt() {{ words=(\"$@\"); CURRENT=${{#words}}; print -rn -- \"$* => \"; _qwen-cred | tr '\\n' ' '; print }}\n",
        path.display()
    );
    for (typed, _, _) in CASES {
        let mut words: Vec<String> = typed.split(' ').map(|w| format!("'{w}'")).collect();
        if typed.ends_with(' ') {
            words.pop();
            words.push("''".into());
        }
        code += &format!("t {}\n", words.join(" "));
    }
    code += "print -r -- \"registered: $registered\"\n";
    let out = run(&env, &zsh, &["-f"], &code);
    assert!(out.contains("registered: _qwen-cred qwen-cred"), "{out}");
    check("zsh", &out);
}

#[test]
fn fish_completion_offers_commands_flags_and_account_ids() {
    let Some(fish) = util::program("QWEN_CRED_TEST_FISH", "fish") else {
        return;
    };
    let env = shell_env();
    let path = script(&env, "fish");
    let mut code = format!("source '{}'\n", path.display());
    for (typed, _, _) in CASES {
        code += &format!(
            "echo '{typed} =>' (complete -C'{typed}' | string replace -r '\\t.*' '' | string join ' ')\n"
        );
    }
    let out = run(&env, &fish, &["--no-config"], &code);
    check("fish", &out);
}
