//! `qwen-cred completions bash|zsh|fish`: a completion script made from the same help texts
//! the parser prints, so it lists every command and flag this binary has. Account ids come
//! from `qwen-cred list --ids` when the user presses Tab, so they follow the store.

use crate::cli::{self, Completions, Shell};
use crate::error::Result;

/// One command (`token`, `opencode install`) and what the script needs to know of it.
struct Cmd {
    /// `["opencode", "install"]`.
    path: Vec<String>,
    about: String,
    /// Each flag with its description and whether it takes a value.
    flags: Vec<(String, String, bool)>,
    subcommands: Vec<(String, String)>,
    positional: Positional,
}

/// What the positional arguments of a command are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Positional {
    None,
    /// One account id, first (use, label, enable, disable, reset).
    Id,
    /// Account ids (remove).
    Ids,
    File,
    Shell,
}

/// What the value of a flag is.
fn value_kind(flag: &str) -> &'static str {
    match flag {
        "--account" | "--replace" => "ids",
        "--format" => "raw json env header",
        "--body" => "file",
        _ => "",
    }
}

/// Every command, from the help texts, depth first.
fn commands() -> Vec<Cmd> {
    let mut out = Vec::new();
    let top = cli::help_of(&[]);
    let mut todo: Vec<(Vec<String>, String)> = cli::commands_in(&top)
        .into_iter()
        .rev()
        .map(|(c, about)| (vec![c], about))
        .collect();
    while let Some((path, about)) = todo.pop() {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        let help = cli::help_of(&p);
        let flags = cli::flags_in(&help)
            .into_iter()
            .map(|(f, d)| {
                let v = cli::takes_value(&help, &f);
                (f, d, v)
            })
            .collect();
        let positional = match cli::positionals_in(&help).first().map(String::as_str) {
            Some("id") => Positional::Id,
            Some("ids") => Positional::Ids,
            Some("path") => Positional::File,
            Some("shell") => Positional::Shell,
            _ => Positional::None,
        };
        let subcommands = cli::commands_in(&help);
        for (s, a) in subcommands.iter().rev() {
            let mut sp = path.clone();
            sp.push(s.clone());
            todo.push((sp, a.clone()));
        }
        out.push(Cmd {
            path,
            about,
            flags,
            subcommands,
            positional,
        });
    }
    out
}

pub fn run(args: &Completions) -> Result<()> {
    let cmds = commands();
    let script = match args.shell {
        Shell::Bash => bash(&cmds),
        Shell::Zsh => zsh(&cmds),
        Shell::Fish => fish(&cmds),
    };
    crate::msg::out(&script)
}

fn top_commands(cmds: &[Cmd]) -> Vec<&str> {
    cmds.iter()
        .filter(|c| c.path.len() == 1)
        .map(|c| c.path[0].as_str())
        .collect()
}

/// The flags that take a value, sorted and once each: those of `kind` (`value_kind`), or all.
fn value_flags(cmds: &[Cmd], kind: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = cmds
        .iter()
        .flat_map(|c| &c.flags)
        .filter(|(f, _, takes)| *takes && kind.is_none_or(|k| value_kind(f) == k))
        .map(|(f, _, _)| f.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The commands whose positional arguments are of `kind`, as `a|b|c` (`-` when none, which
/// matches no word).
fn with_positional(cmds: &[Cmd], kind: Positional) -> String {
    let v: Vec<String> = cmds
        .iter()
        .filter(|c| c.positional == kind)
        .map(|c| c.path.join(" "))
        .collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join("|")
    }
}

fn bash(cmds: &[Cmd]) -> String {
    let mut flags_case = String::new();
    let mut subs_case = String::new();
    for c in cmds {
        let flags: Vec<&str> = c.flags.iter().map(|(f, _, _)| f.as_str()).collect();
        flags_case += &format!(
            "        \"{}\") flags=\"{}\" ;;\n",
            c.path.join(" "),
            flags.join(" ")
        );
        if !c.subcommands.is_empty() {
            let subs: Vec<&str> = c.subcommands.iter().map(|(s, _)| s.as_str()).collect();
            subs_case += &format!(
                "        \"{}\") subs=\"{}\" ;;\n",
                c.path.join(" "),
                subs.join(" ")
            );
        }
    }
    let all_value_flags = value_flags(cmds, None);
    format!(
        r#"# bash completion for qwen-cred {version}: commands, flags, and account ids from the store.
# Load it with:  source <(qwen-cred completions bash)
# or save it as ~/.local/share/bash-completion/completions/qwen-cred

_qwen_cred_ids() {{
    command qwen-cred list --ids 2>/dev/null
}}

_qwen_cred() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local cmd="" subs="" flags="" i w
    # The command path so far: a word is a command when the level above lists it.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        subs=""
        case "$cmd" in
{subs_case}        esac
        if [[ -z "$cmd" ]]; then
            subs="{top} help"
        fi
        case "$w" in -*) continue ;; esac
        if [[ " $subs " == *" $w "* ]]; then
            cmd="${{cmd:+$cmd }}$w"
        else
            break
        fi
    done
    case "$prev" in
        {ids_flags}) COMPREPLY=($(compgen -W "$(_qwen_cred_ids)" -- "$cur")); return ;;
        --format) COMPREPLY=($(compgen -W "raw json env header" -- "$cur")); return ;;
        --body) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        {value_flags}) COMPREPLY=(); return ;;
    esac
    subs=""
    case "$cmd" in
        "") subs="{top} help" ;;
{subs_case}    esac
    case "$cmd" in
{flags_case}        *) flags="" ;;
    esac
    if [[ -z "$cmd" ]]; then
        flags="--version --help"
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$flags" -- "$cur"))
        return
    fi
    if [[ -n "$subs" ]]; then
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
        return
    fi
    case "$cmd" in
        help) COMPREPLY=($(compgen -W "{top}" -- "$cur")) ;;
        {id_cmds}) [[ "$prev" == "${{cmd##* }}" ]] && COMPREPLY=($(compgen -W "$(_qwen_cred_ids)" -- "$cur")) ;;
        {ids_cmds}) COMPREPLY=($(compgen -W "$(_qwen_cred_ids)" -- "$cur")) ;;
        {file_cmds}) COMPREPLY=($(compgen -f -- "$cur")) ;;
        {shell_cmds}) COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur")) ;;
    esac
}}

complete -F _qwen_cred qwen-cred
"#,
        version = env!("CARGO_PKG_VERSION"),
        top = top_commands(cmds).join(" "),
        ids_flags = value_flags(cmds, Some("ids")).join("|"),
        value_flags = all_value_flags.join("|"),
        id_cmds = with_positional(cmds, Positional::Id),
        ids_cmds = with_positional(cmds, Positional::Ids),
        file_cmds = with_positional(cmds, Positional::File),
        shell_cmds = with_positional(cmds, Positional::Shell),
    )
}

/// `s` inside single quotes for zsh and fish (`'` closes, escaped, reopens in zsh; fish
/// takes `\'`).
fn zsh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn fish_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', r"\\").replace('\'', r"\'"))
}

fn zsh(cmds: &[Cmd]) -> String {
    let described: Vec<String> = cmds
        .iter()
        .filter(|c| c.path.len() == 1)
        .map(|c| {
            format!(
                "        {}",
                zsh_quote(&format!("{}:{}", c.path[0], c.about.replace(':', r"\:")))
            )
        })
        .collect();
    let mut flags_case = String::new();
    let mut subs_case = String::new();
    for c in cmds {
        let flags: Vec<&str> = c.flags.iter().map(|(f, _, _)| f.as_str()).collect();
        flags_case += &format!(
            "        ({}) flags=({}) ;;\n",
            zsh_quote(&c.path.join(" ")),
            flags.join(" ")
        );
        if !c.subcommands.is_empty() {
            let subs: Vec<&str> = c.subcommands.iter().map(|(s, _)| s.as_str()).collect();
            subs_case += &format!(
                "        ({}) subs=({}) ;;\n",
                zsh_quote(&c.path.join(" ")),
                subs.join(" ")
            );
        }
    }
    let all_value_flags = value_flags(cmds, None);
    let quoted =
        |list: String| -> String { list.split('|').map(zsh_quote).collect::<Vec<_>>().join("|") };
    format!(
        r#"#compdef qwen-cred
# zsh completion for qwen-cred {version}: commands, flags, and account ids from the store.
# Load it with:  source <(qwen-cred completions zsh)   (after compinit)
# or save it as _qwen-cred in a directory of $fpath.

_qwen-cred() {{
    local -a commands subs flags ids
    commands=(
{described}
    )
    local cmd="" w i
    for ((i = 2; i < CURRENT; i++)); do
        w=${{words[i]}}
        [[ $w == -* ]] && continue
        subs=()
        case "$cmd" in
            '') subs=(${{commands%%:*}} help) ;;
{subs_case}        esac
        if (( ${{subs[(Ie)$w]}} )); then
            cmd=${{cmd:+$cmd }}$w
        else
            break
        fi
    done
    local prev=${{words[CURRENT-1]}} cur=${{words[CURRENT]}}
    case $prev in
        {ids_flags}) ids=(${{(f)"$(command qwen-cred list --ids 2>/dev/null)"}}); compadd -a ids; return ;;
        --format) compadd raw json env header; return ;;
        --body) _files; return ;;
        {value_flags}) return ;;
    esac
    subs=()
    flags=()
    case "$cmd" in
{subs_case}    esac
    case "$cmd" in
{flags_case}    esac
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then compadd -- --version --help; else _describe command commands; compadd help; fi
        return
    fi
    if [[ $cur == -* ]]; then
        compadd -a flags
        return
    fi
    if (( ${{#subs}} )); then
        compadd -a subs
        return
    fi
    case "$cmd" in
        help) _describe command commands ;;
        {id_cmds}) [[ $prev == ${{cmd##* }} ]] && {{ ids=(${{(f)"$(command qwen-cred list --ids 2>/dev/null)"}}); compadd -a ids }} ;;
        {ids_cmds}) ids=(${{(f)"$(command qwen-cred list --ids 2>/dev/null)"}}); compadd -a ids ;;
        {file_cmds}) _files ;;
        {shell_cmds}) compadd bash zsh fish ;;
    esac
}}

if [[ $funcstack[1] == _qwen-cred ]]; then
    _qwen-cred "$@"
else
    compdef _qwen-cred qwen-cred
fi
"#,
        version = env!("CARGO_PKG_VERSION"),
        described = described.join("\n"),
        subs_case = subs_case,
        flags_case = flags_case,
        ids_flags = quoted(value_flags(cmds, Some("ids")).join("|")),
        value_flags = quoted(all_value_flags.join("|")),
        id_cmds = quoted(with_positional(cmds, Positional::Id)),
        ids_cmds = quoted(with_positional(cmds, Positional::Ids)),
        file_cmds = quoted(with_positional(cmds, Positional::File)),
        shell_cmds = quoted(with_positional(cmds, Positional::Shell)),
    )
}

fn fish(cmds: &[Cmd]) -> String {
    let mut out = format!(
        "# fish completion for qwen-cred {}: commands, flags, and account ids from the store.\n# Load it with:  qwen-cred completions fish | source\n# or save it as ~/.config/fish/completions/qwen-cred.fish\n\ncomplete -c qwen-cred -f\n",
        env!("CARGO_PKG_VERSION")
    );
    let ids = "(command qwen-cred list --ids 2>/dev/null)";
    let top = top_commands(cmds).join(" ");
    out += "complete -c qwen-cred -n __fish_use_subcommand -l version -d 'print the version and exit'\n";
    out +=
        "complete -c qwen-cred -n __fish_use_subcommand -l help -d 'display usage information'\n";
    out += &format!(
        "complete -c qwen-cred -n __fish_use_subcommand -a help -d 'show the usage of a command'\ncomplete -c qwen-cred -n '__fish_seen_subcommand_from help' -a {}\n",
        fish_quote(&top)
    );
    for c in cmds {
        let name = c.path.last().map(String::as_str).unwrap_or("");
        // The condition that this command is the one being typed.
        let cond = match c.path.len() {
            1 => {
                let subs: Vec<&str> = c.subcommands.iter().map(|(s, _)| s.as_str()).collect();
                if subs.is_empty() {
                    format!("__fish_seen_subcommand_from {name}")
                } else {
                    format!(
                        "__fish_seen_subcommand_from {name}; and not __fish_seen_subcommand_from {}",
                        subs.join(" ")
                    )
                }
            }
            _ => format!(
                "__fish_seen_subcommand_from {}; and __fish_seen_subcommand_from {name}",
                c.path[0]
            ),
        };
        let cond = fish_quote(&cond);
        if c.path.len() == 1 {
            out += &format!(
                "complete -c qwen-cred -n __fish_use_subcommand -a {name} -d {}\n",
                fish_quote(&c.about)
            );
        }
        for (s, about) in &c.subcommands {
            out += &format!(
                "complete -c qwen-cred -n {cond} -a {s} -d {}\n",
                fish_quote(about)
            );
        }
        for (flag, about, takes) in &c.flags {
            let long = flag.trim_start_matches("--");
            let value = match (value_kind(flag), takes) {
                (_, false) => String::new(),
                // -x: a value, and no file names offered for it.
                ("ids", true) => format!(" -x -a '{ids}'"),
                ("file", true) => " -r -F".into(),
                ("", true) => " -x".into(),
                (list, true) => format!(" -x -a {}", fish_quote(list)),
            };
            out += &format!(
                "complete -c qwen-cred -n {cond} -l {long}{value} -d {}\n",
                fish_quote(about)
            );
        }
        match c.positional {
            // The id comes right after the command: `qwen-cred label ID NAME`.
            Positional::Id => {
                let first = fish_quote(&format!(
                    "{}; and test (count (commandline -opc)) -eq 2",
                    cond.trim_matches('\'')
                ));
                out += &format!("complete -c qwen-cred -n {first} -a '{ids}'\n")
            }
            Positional::Ids => out += &format!("complete -c qwen-cred -n {cond} -a '{ids}'\n"),
            Positional::File => out += &format!("complete -c qwen-cred -n {cond} -F\n"),
            Positional::Shell => {
                out += &format!("complete -c qwen-cred -n {cond} -a 'bash zsh fish'\n")
            }
            Positional::None => {}
        }
    }
    out
}
