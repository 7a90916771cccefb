//! A tool's man page: clap_mangen's title, name, synopsis and options (and one subsection per
//! verb for ns-ctl and ns-oci), with the hand-written sections of `man/TOOL.md` around them.
//!
//! The hand-written text is a small subset of Markdown: `## TITLE` starts a section (DESCRIPTION
//! replaces clap's one-line description; the others follow the options, in file order),
//! paragraphs are separated by blank lines, ``` fences an example shown as is, `- TERM: text`
//! is a tagged paragraph (TERM in bold when it is `quoted`), `- text` a bullet, and `code`
//! inside text is bold.

use std::io::Write;

use clap::Command;
use clap_mangen::Man;
use roff::{bold, roman, Inline, Roff};

use crate::Tool;

/// The rendered page (roff, for man(1)).
pub fn page(tool: &Tool) -> std::io::Result<Vec<u8>> {
    let mut cmd = (tool.command)().disable_help_subcommand(true);
    cmd.build();
    let usage = usage(&mut cmd);
    let version = cmd.get_version().unwrap_or_default().to_string();
    let man = Man::new(cmd.clone().override_usage(usage))
        .source(format!("ns-run {version}"))
        .manual("ns-run toolkit");
    let sections = sections(tool.text);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    match sections.iter().find(|(t, _)| t == "DESCRIPTION") {
        Some((t, body)) => out.write_all(render(t, body).as_bytes())?,
        None => man.render_description_section(&mut out)?,
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.has_subcommands() {
        verbs(&cmd, &mut out)?;
    }
    for (title, body) in sections.iter().filter(|(t, _)| t != "DESCRIPTION") {
        out.write_all(render(title, body).as_bytes())?;
    }
    Ok(out)
}

/// clap's own usage line ("ns-run [OPTIONS] [COMMAND]..."): the synopsis, where clap_mangen
/// would list every option.
fn usage(cmd: &mut Command) -> String {
    let u = cmd.render_usage().to_string();
    u.trim_start_matches("Usage:").trim().to_string()
}

/// One subsection per verb: its usage, what it does, its own options.
fn verbs(cmd: &Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    out.write_all(roff.to_roff().as_bytes())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // The global options (ns-ctl's -o) and --help are the command's, listed once above;
        // an operand without help text is in the usage line already.
        let mut sub = sub.clone().mut_args(|a| {
            let id = a.get_id().as_str();
            let bare = a.is_positional() && a.get_help().is_none();
            if a.is_global_set() || id == "help" || id == "version" || bare {
                a.hide(true)
            } else {
                a
            }
        });
        let mut roff = Roff::new();
        roff.control("SS", [usage(&mut sub).as_str()]);
        if let Some(about) = sub.get_about() {
            roff.text([roman(about.to_string())]);
        }
        out.write_all(roff.to_roff().as_bytes())?;
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            let mut opts = Vec::new();
            Man::new(sub).render_options_section(&mut opts)?;
            let opts = String::from_utf8_lossy(&opts);
            out.write_all(b".RS\n")?;
            for line in opts.lines().filter(|l| !l.starts_with(".SH")) {
                writeln!(out, "{line}")?;
            }
            out.write_all(b".RE\n")?;
        }
    }
    Ok(())
}

/// The `## TITLE` sections of a hand-written text, in order.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            v.push((title.trim().to_uppercase(), String::new()));
        } else if let Some((_, body)) = v.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    v
}

/// `text` with `code` spans in bold.
fn inline(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| if i % 2 == 1 { bold(s) } else { roman(s) })
        .collect()
}

/// One hand-written section as roff.
fn render(title: &str, body: &str) -> String {
    let mut roff = Roff::new();
    roff.control("SH", [title]);
    let mut para = String::new();
    let mut code = false;
    let flush = |roff: &mut Roff, para: &mut String| {
        if !para.is_empty() {
            item(roff, para.trim_end());
            para.clear();
        }
    };
    for line in body.lines() {
        if line.starts_with("```") {
            flush(&mut roff, &mut para);
            if code {
                roff.control("fi", []).control("RE", []);
            } else {
                roff.control("PP", [])
                    .control("RS", ["4"])
                    .control("nf", []);
            }
            code = !code;
        } else if code {
            roff.text([roman(line)]);
        } else if line.trim().is_empty() || line.starts_with("- ") {
            flush(&mut roff, &mut para);
            para.push_str(line);
        } else {
            if !para.is_empty() {
                para.push(' ');
            }
            para.push_str(line.trim());
        }
    }
    flush(&mut roff, &mut para);
    roff.to_roff()
}

/// A paragraph, a tagged paragraph (`- TERM: text`) or a bullet (`- text`).
fn item(roff: &mut Roff, para: &str) {
    let para = para.trim();
    if para.is_empty() {
        return;
    }
    let Some(rest) = para.strip_prefix("- ") else {
        roff.control("PP", []).text(inline(para));
        return;
    };
    match rest.split_once(": ") {
        Some((term, text)) if term.len() < 40 => {
            roff.control("TP", []).text(inline(term)).text(inline(text));
        }
        _ => {
            roff.control("IP", ["\\(bu", "2"]).text(inline(rest));
        }
    }
}
