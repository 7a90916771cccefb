//! ns-doc: writes the toolkit's man pages and shell completions, generated from the same clap
//! definitions the tools parse their command lines with (so they cannot drift from them),
//! plus the hand-written sections of `man/*.md` (description, examples, exit status, files,
//! environment) and the small shell functions of `shell/` that complete names (running
//! machines, images) where clap only knows "a string".
//!
//! `ns-doc OUTDIR` writes, under OUTDIR (laid out as PREFIX/share):
//! `man/man1/TOOL.1`, `bash-completion/completions/TOOL`, `zsh/site-functions/_TOOL` and
//! `fish/vendor_completions.d/TOOL.fish`. `ns-doc version` prints the toolkit's version.
//! scripts/install and scripts/deb run it; it is never installed, and no tool links its crates
//! (clap_mangen, clap_complete): a chain stage's size and exec cost stay as they are.
#![forbid(unsafe_code)]

mod man;

use std::io::Write;
use std::path::Path;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

// ns-ctl's and ns-oci's command lines live in their binaries (no library crate): their clap
// definitions are included here from the same files their main.rs includes.
#[path = "../../ns-ctl/src/images/cli.rs"]
mod image_cli;
mod ctl {
    use crate::image_cli;
    use clap::{Parser, Subcommand};
    include!("../../ns-ctl/src/cli.rs");
    pub fn command() -> clap::Command {
        <Args as clap::CommandFactory>::command()
    }
}
mod oci {
    use clap::{Parser, Subcommand};
    use std::path::PathBuf;
    include!("../../ns-oci/src/cli.rs");
    pub fn command() -> clap::Command {
        <Cli as clap::CommandFactory>::command()
    }
}

/// One installed tool: its name, its clap command, its hand-written man page sections.
pub struct Tool {
    pub name: &'static str,
    pub command: fn() -> Command,
    pub text: &'static str,
}

/// Every tool with a man page and completions (ns-ctl-images has neither: ns-ctl runs it
/// with ns-ctl's own arguments).
pub const TOOLS: [Tool; 8] = [
    Tool {
        name: "ns-run",
        command: ns_run::cli::command,
        text: include_str!("../man/ns-run.md"),
    },
    Tool {
        name: "ns-ctl",
        command: ctl::command,
        text: include_str!("../man/ns-ctl.md"),
    },
    Tool {
        name: "ns-oci",
        command: oci::command,
        text: include_str!("../man/ns-oci.md"),
    },
    Tool {
        name: "ns-enter",
        command: ns_enter::Args::command,
        text: include_str!("../man/ns-enter.md"),
    },
    Tool {
        name: "ns-mount",
        command: ns_mount::Args::command,
        text: include_str!("../man/ns-mount.md"),
    },
    Tool {
        name: "ns-caps",
        command: ns_caps::Args::command,
        text: include_str!("../man/ns-caps.md"),
    },
    Tool {
        name: "ns-init",
        command: ns_init::Args::command,
        text: include_str!("../man/ns-init.md"),
    },
    Tool {
        name: "ns-net",
        command: ns_net::Args::command,
        text: include_str!("../man/ns-net.md"),
    },
];

/// Hand-written completion functions appended to clap_complete's output, per shell: names of
/// running machines (`ns-ctl list`) and images (`ns-ctl list-images`) for ns-ctl's verbs and
/// ns-run's `-M`. `@NAME@` is the tool, `@FN@` the function clap_complete named after it.
fn dynamic(shell: Shell, tool: &str) -> Option<&'static str> {
    match (shell, tool) {
        (Shell::Bash, "ns-ctl") => Some(include_str!("../shell/ns-ctl.bash")),
        (Shell::Bash, "ns-run") => Some(include_str!("../shell/ns-run.bash")),
        (Shell::Zsh, "ns-ctl") => Some(include_str!("../shell/ns-ctl.zsh")),
        (Shell::Zsh, "ns-run") => Some(include_str!("../shell/ns-run.zsh")),
        (Shell::Fish, "ns-ctl") => Some(include_str!("../shell/ns-ctl.fish")),
        (Shell::Fish, "ns-run") => Some(include_str!("../shell/ns-run.fish")),
        _ => None,
    }
}

/// clap_complete's script for `tool`, with the hand-written functions for its dynamic parts.
/// zsh: the generated `_TOOL` is renamed `_TOOL_clap`, and ours (named `_TOOL`, which the
/// script's own last lines call and compdef) falls back to it.
fn completion(shell: Shell, tool: &Tool) -> Result<String, String> {
    let mut cmd = (tool.command)();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, tool.name, &mut buf);
    let mut s = String::from_utf8(buf).map_err(|e| e.to_string())?;
    let Some(extra) = dynamic(shell, tool.name) else {
        return Ok(s);
    };
    match shell {
        Shell::Zsh => {
            let def = format!("\n_{}() {{\n", tool.name);
            let Some(at) = s.find(&def) else {
                return Err(format!(
                    "{}: no {def:?} in clap_complete's zsh script",
                    tool.name
                ));
            };
            s.replace_range(at..at + def.len(), &format!("\n_{}_clap() {{\n", tool.name));
            let trailer = s
                .rfind("\nif [ \"$funcstack[1]\"")
                .ok_or_else(|| format!("{}: no trailer in the zsh script", tool.name))?;
            s.insert_str(trailer + 1, &format!("{extra}\n"));
        }
        _ => {
            s.push('\n');
            s.push_str(extra);
        }
    }
    Ok(s)
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(fail)
}

fn generate(out: &Path) -> Result<(), String> {
    for tool in &TOOLS {
        let page = man::page(tool).map_err(|e| format!("{}: {e}", tool.name))?;
        write(&out.join(format!("man/man1/{}.1", tool.name)), &page)?;
        for (shell, file) in [
            (
                Shell::Bash,
                format!("bash-completion/completions/{}", tool.name),
            ),
            (Shell::Zsh, format!("zsh/site-functions/_{}", tool.name)),
            (
                Shell::Fish,
                format!("fish/vendor_completions.d/{}.fish", tool.name),
            ),
        ] {
            write(&out.join(file), completion(shell, tool)?.as_bytes())?;
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["version"] => {
            println!("{}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        [out] if !out.starts_with('-') => generate(Path::new(out)),
        _ => Err("usage: ns-doc OUTDIR | ns-doc version".into()),
    };
    if let Err(e) = result {
        eprintln!("ns-doc: {e}");
        std::process::exit(125);
    }
}
