//! The settings reference (`docs/reference/settings.md`), rendered from the clap
//! definitions in [`super::cli`]: one text serves `--help` and the book, so a default,
//! a range or a unit cannot be written one way in the code and another in the docs.
//!
//! `cargo test --lib config::reference` fails when the committed page differs from the
//! definitions; `UPDATE_DOCS=1` rewrites it.

use clap::CommandFactory;

use super::cli::Cli;

/// Where the page is, from the crate's root.
pub const PAGE: &str = "docs/reference/settings.md";

/// The page: every setting `--help` shows, global ones first, then each command's.
pub fn settings_page() -> String {
    let cli = Cli::command();
    let mut page = String::from(
        "# Settings\n\n\
         <!-- Generated from src/config/cli.rs by `UPDATE_DOCS=1 cargo test --lib config::reference`; \
         do not edit by hand. -->\n\n\
         Every setting is an environment variable and a flag; the flag wins. Sizes take `KiB`, \
         `MiB`, `GiB`, `KB`, `MB` or bytes; durations take `500ms`, `30s`, `2m`, `1h` or a bare \
         number of seconds. A missing or malformed value stops the start with one line naming \
         the variable, such as `error: FORWARDER_WORKERS: invalid value 'abc' for '--workers <N>': \
         invalid digit found in string`. The effective configuration is logged once at start.\n\n\
         Region, credentials and endpoint are the AWS SDK's own variables, with no parallel ones: \
         `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, \
         `AWS_PROFILE`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_SQS`. With neither a region nor a \
         profile region set, the worker refuses to start (`error: AWS_REGION: is not set …`).\n\n\
         Memory: the binary allocates with mimalloc, set so that a block over 512 KiB (the body \
         of a large event, a request of them) goes back to the system when freed. mimalloc's own \
         variables take precedence: `MIMALLOC_ARENA_MAX_OBJECT_SIZE=2097152 \
         MIMALLOC_ARENA_EAGER_COMMIT=2` (its defaults) spend about 25 % less CPU on 1 MiB events \
         for about 45 MiB more peak RSS. How to size a pod: \
         [Performance](../explanations/performance.md#sizing-a-pod).\n\n\
         ## Every command\n\n",
    );
    for arg in cli.get_arguments() {
        setting(&mut page, arg);
    }
    for command in cli.get_subcommands() {
        let own: Vec<&clap::Arg> = command
            .get_arguments()
            .filter(|a| !a.is_global_set() && a.get_env().is_some() && !a.is_hide_set())
            .collect();
        if own.is_empty() {
            continue;
        }
        page.push_str(&format!("## `{}`\n\n", command.get_name()));
        for arg in own {
            setting(&mut page, arg);
        }
    }
    page
}

/// One setting: its variable, flag, value, default, and its long help.
fn setting(page: &mut String, arg: &clap::Arg) {
    let Some(env) = arg.get_env() else {
        return;
    };
    if arg.is_hide_set() {
        return;
    }
    let env = env.to_string_lossy();
    page.push_str(&format!("### `{env}`\n\n"));
    let mut line = Vec::new();
    if let Some(long) = arg.get_long() {
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map(|name| format!(" {name}"))
            .unwrap_or_default();
        line.push(format!("`--{long}{value}`"));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|d| match d.to_string_lossy() {
            // As `--help` shows an empty default.
            empty if empty.is_empty() => "\"\"".to_string(),
            d => d.into_owned(),
        })
        .collect();
    if !defaults.is_empty() {
        line.push(format!("default `{}`", defaults.join(",")));
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !values.is_empty() {
        line.push(format!("one of {}", values.join(", ")));
    }
    if !line.is_empty() {
        page.push_str(&line.join(" · "));
        page.push_str("\n\n");
    }
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    // clap's help is plain text: one paragraph per blank line.
    for paragraph in help.split("\n\n") {
        let text = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() {
            page.push_str(&text);
            page.push_str("\n\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_page_is_the_definitions() {
        let page = settings_page();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PAGE);
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &page).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == page,
            "{PAGE} differs from the definitions in src/config/cli.rs: \
             run `UPDATE_DOCS=1 cargo test --lib config::reference` and commit it"
        );
    }

    /// Every variable `--help` of the binary and of each command shows is on the page,
    /// with the default `--help` gives.
    #[test]
    fn every_variable_help_shows_is_on_the_page_with_its_default() {
        let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let page = norm(&settings_page());
        let mut cli = Cli::command();
        let mut helps = vec![cli.render_long_help().to_string()];
        for command in cli.get_subcommands_mut() {
            helps.push(command.render_long_help().to_string());
        }
        let mut seen = 0;
        for help in &helps {
            for (at, _) in help.match_indices("[env: ") {
                let rest = &help[at + 6..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    page.contains(&format!("### `{name}`")),
                    "{name} is not on the page"
                );
                seen += 1;
            }
            for (at, _) in help.match_indices("[default: ") {
                let default: String = help[at + 10..].chars().take_while(|c| *c != ']').collect();
                let default = norm(&default);
                assert!(
                    page.contains(&format!("default `{default}`"))
                        || page.contains(&format!("[default: {default}]")),
                    "default {default:?} is not on the page"
                );
            }
        }
        assert!(seen > 50, "{seen} variables in --help");
    }
}
