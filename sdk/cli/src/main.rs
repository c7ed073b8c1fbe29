//! `wasmesh`: tools for filter authors.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "wasmesh tools for filter authors")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with filter plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Makes a filter crate that builds, tests (on the real host) and runs in the proxy.
    New {
        /// The filter's name (a crate name: letters, digits, `-`, `_`).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The wasmesh `sdk/` directory the crate depends on (default: the one this binary was
        /// built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Plugin {
            command: PluginCommand::New { name, dir, sdk },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = sdk.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
            plugin_new(&name, &dir, &sdk)?;
            println!("created {} ({})", dir.display(), name);
            println!(
                "  cd {} && cargo build --target wasm32-wasip1 --release && cargo test",
                dir.display()
            );
            Ok(())
        }
    }
}

const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../template/Cargo.toml.in")),
    ("src/lib.rs", include_str!("../template/lib.rs.in")),
    ("tests/filter.rs", include_str!("../template/test.rs.in")),
    ("README.md", include_str!("../template/README.md.in")),
    ("proxy.yaml", include_str!("../template/proxy.yaml.in")),
    (".gitignore", "/target\n"),
];

fn plugin_new(name: &str, dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!(
            "{name:?} is not a crate name: use letters, digits, '-' and '_', not starting with a digit"
        );
    }
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("the SDK directory {}", sdk.display()))?;
    if !sdk.join("Cargo.toml").exists() {
        bail!(
            "{} has no Cargo.toml: pass --sdk with the path of wasmesh's sdk/ directory",
            sdk.display()
        );
    }
    for (file, template) in FILES {
        let text = template
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk.display().to_string());
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a parent"))
            .with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    // The versions wasmesh was tested with (cargo drops what the filter does not use).
    if let Some(lock) = sdk
        .parent()
        .map(|root| root.join("Cargo.lock"))
        .filter(|l| l.exists())
    {
        std::fs::copy(&lock, dir.join("Cargo.lock")).context("copy Cargo.lock")?;
    }
    Ok(())
}
