//! `sprig plugin new NAME [--path DIR] [--sdk-path PATH | --sdk-git URL]`: writes a recovery-plugin crate
//! that builds, passes its tests and loads as it is, from the templates in `plugin_template/`.
//!
//! Which `sprig-sdk` the crate depends on, first found:
//! 1. `--sdk-path PATH`: the `sdk/` directory of a local checkout of the gateway's source;
//! 2. `--sdk-git URL`, or `$SPRIG_SDK_GIT`: the gateway's repository, at this sprig's release tag
//!    (`v` and the version, `v0.1.0`), the sdk this binary was built with;
//! 3. the `sdk/` of the source this binary was built from, if it is still there at the same version (a
//!    gateway built from a checkout: the author's usual case);
//!
//! else the command says how to choose (exit 252). The crate has a `[workspace]` table of its own, so it
//! builds wherever it is created, even inside another workspace.

use std::path::{Path, PathBuf};

use clap::Args;

use super::Failure;

/// `sprig plugin new`.
#[derive(Debug, Clone, Args)]
pub struct PluginNewArgs {
    /// The plugin crate's name (a Cargo package name: ASCII letters, digits, - and _, starting with a
    /// letter); the library is lib<NAME with _ for ->.so
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The directory to create the crate in (it must not exist, or be empty) [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
    /// Depend on the sprig-sdk of a local checkout: its sdk/ directory
    #[arg(long, value_name = "PATH", conflicts_with = "sdk_git")]
    pub sdk_path: Option<PathBuf>,
    /// Depend on sprig-sdk from this git repository (the gateway's source), at this sprig's tag
    /// v<VERSION> [default: $SPRIG_SDK_GIT]
    #[arg(long, value_name = "URL")]
    pub sdk_git: Option<String>,
}

/// This sprig's version: the sdk it was built with has the same (the sdk's package values are the
/// workspace's), so its release tag names that sdk.
const SPRIG_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `sdk/` of the source this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// The templates: (file in the new crate, its text with `@NAME@`-style placeholders).
const TEMPLATES: [(&str, &str); 5] = [
    ("Cargo.toml", include_str!("plugin_template/Cargo.toml.in")),
    ("src/lib.rs", include_str!("plugin_template/lib.rs.in")),
    ("README.md", include_str!("plugin_template/README.md.in")),
    (
        "recovery.toml",
        include_str!("plugin_template/recovery.toml.in"),
    ),
    (".gitignore", include_str!("plugin_template/gitignore.in")),
];

/// Where the new crate's `sprig-sdk` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SdkSource {
    /// A directory holding the sdk's `Cargo.toml` (absolute).
    Path(PathBuf),
    /// A git repository, at this sprig's tag.
    Git(String),
}

impl SdkSource {
    /// The crate's `[dependencies]` line.
    fn dependency(&self) -> String {
        match self {
            SdkSource::Path(path) => format!(
                "sprig-sdk = {{ path = {} }}",
                toml_string(&path.display().to_string())
            ),
            SdkSource::Git(url) => format!(
                "sprig-sdk = {{ git = {}, tag = {} }}",
                toml_string(url),
                toml_string(&format!("v{SPRIG_VERSION}"))
            ),
        }
    }
}

impl std::fmt::Display for SdkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SdkSource::Path(path) => write!(f, "path {}", path.display()),
            SdkSource::Git(url) => write!(f, "git {url}, tag v{SPRIG_VERSION}"),
        }
    }
}

/// A TOML basic string (quoted and escaped).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Runs `sprig plugin new`.
pub fn run(args: &PluginNewArgs) -> Result<Option<String>, Failure> {
    check_crate_name(&args.name).map_err(|why| usage(&why))?;
    let sdk = choose_sdk(
        args,
        std::env::var("SPRIG_SDK_GIT").ok(),
        Path::new(BUILT_FROM_SDK),
    )
    .map_err(|why| usage(&why))?;
    let dir = args
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    prepare_dir(&dir).map_err(|why| Failure::Fatal(format!("sprig: {why}")))?;
    let files = render(&args.name, &sdk);
    for (file, text) in &files {
        let path = dir.join(file);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        written
            .map_err(|e| Failure::Fatal(format!("sprig: cannot write {}: {e}", path.display())))?;
    }
    Ok(Some(summary(&args.name, &dir, &sdk, &files)))
}

fn usage(why: &str) -> Failure {
    Failure::Usage(format!("sprig: error: {why}"))
}

/// A name Cargo takes for a package, whose library name (`-` as `_`) Rust takes for a crate.
fn check_crate_name(name: &str) -> Result<(), String> {
    const KEYWORDS: &[&str] = &[
        "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
        "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
        "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub",
        "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "try",
        "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
    ];
    // Crates every build has, and the sdk itself: a plugin of that name would shadow them.
    const TAKEN: &[&str] = &["std", "core", "alloc", "proc_macro", "test", "sprig_sdk"];
    let bad = |why: &str| Err(format!("{name:?} is not a plugin crate name: {why}"));
    let Some(first) = name.chars().next() else {
        return bad("it is empty");
    };
    if !first.is_ascii_alphabetic() {
        return bad("it must start with an ASCII letter");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && *c != '-' && *c != '_')
    {
        return bad(&format!(
            "{c:?} is not allowed (ASCII letters, digits, - and _ are)"
        ));
    }
    if name.len() > 64 {
        return bad("it is longer than 64 characters");
    }
    let library = name.replace('-', "_");
    if KEYWORDS.contains(&library.as_str()) {
        return bad("it is a Rust keyword");
    }
    if TAKEN.contains(&library.as_str()) {
        return bad("a crate of that name is part of every plugin's build");
    }
    Ok(())
}

/// The sdk to depend on, in the order of the module docs; `env_git` is `$SPRIG_SDK_GIT`, `built_from`
/// the sdk directory of the source this binary was built from.
fn choose_sdk(
    args: &PluginNewArgs,
    env_git: Option<String>,
    built_from: &Path,
) -> Result<SdkSource, String> {
    if let Some(path) = &args.sdk_path {
        let (dir, _) = sdk_at(path)?;
        return Ok(SdkSource::Path(dir));
    }
    if let Some(url) = args.sdk_git.clone().or(env_git).filter(|u| !u.is_empty()) {
        return Ok(SdkSource::Git(url));
    }
    match sdk_at(built_from) {
        Ok((dir, version)) if version == SPRIG_VERSION => Ok(SdkSource::Path(dir)),
        _ => Err(format!(
            "say where the plugin gets sprig-sdk from: --sdk-git URL (the sprig repository; tag \
             v{SPRIG_VERSION} is used, the sdk of this sprig), or SPRIG_SDK_GIT=URL, or --sdk-path DIR \
             (the sdk/ directory of a sprig source checkout)"
        )),
    }
}

/// The sdk crate in `dir`: its absolute path and version, or why `dir` is not it.
fn sdk_at(dir: &Path) -> Result<(PathBuf, String), String> {
    let not = |why: String| format!("{} is not the sprig-sdk crate: {why}", dir.display());
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| not(format!("cannot read {}: {e}", manifest.display())))?;
    let parsed: toml::Table = toml::from_str(&text)
        .map_err(|e| not(format!("{} is not TOML: {e}", manifest.display())))?;
    let package = parsed.get("package").and_then(toml::Value::as_table);
    let field = |key: &str| {
        package
            .and_then(|p| p.get(key))
            .and_then(toml::Value::as_str)
    };
    if field("name") != Some("sprig-sdk") {
        return Err(not("its Cargo.toml names another package".to_owned()));
    }
    let version = field("version")
        .ok_or_else(|| not("its Cargo.toml has no version of its own".to_owned()))?;
    let absolute = std::fs::canonicalize(dir).map_err(|e| not(e.to_string()))?;
    Ok((absolute, version.to_owned()))
}

/// Creates `dir`, refusing a file or a directory that is not empty.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "{} exists and is not empty: choose another --path, or empty it",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display())),
        Err(_) if dir.exists() => Err(format!("{} exists and is not a directory", dir.display())),
        Err(e) => Err(format!("cannot read {}: {e}", dir.display())),
    }
}

/// The crate's files, placeholders replaced.
fn render(name: &str, sdk: &SdkSource) -> Vec<(&'static str, String)> {
    let library = name.replace('-', "_");
    let values = [
        ("@NAME@", name.to_owned()),
        ("@LIB@", library),
        ("@SPRIG_VERSION@", SPRIG_VERSION.to_owned()),
        ("@ABI_VERSION@", sprig_sdk::ABI_VERSION.to_string()),
        ("@SDK_DEPENDENCY@", sdk.dependency()),
    ];
    TEMPLATES
        .iter()
        .map(|(file, template)| {
            let text = values
                .iter()
                .fold(template.to_string(), |text, (placeholder, value)| {
                    text.replace(placeholder, value)
                });
            (*file, text)
        })
        .collect()
}

/// What was made, and what to do next.
fn summary(name: &str, dir: &Path, sdk: &SdkSource, files: &[(&str, String)]) -> String {
    let library = format!("lib{}.so", name.replace('-', "_"));
    let listed: Vec<&str> = files.iter().map(|(file, _)| *file).collect();
    format!(
        "Created the plugin crate {name} in {dir} (sprig-sdk: {sdk}):\n  {files}\n\nNext:\n  \
         cd {dir}\n  cargo test && cargo build --release\n  sprig plugin check target/release/{library} \
         --config recovery.toml --context - <<< '{{\"thingName\": \"pump-1\"}}'",
        dir = dir.display(),
        files = listed.join("  "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(name: &str) -> PluginNewArgs {
        PluginNewArgs {
            name: name.into(),
            path: None,
            sdk_path: None,
            sdk_git: None,
        }
    }

    fn workspace_sdk() -> PathBuf {
        std::fs::canonicalize(BUILT_FROM_SDK).unwrap()
    }

    #[test]
    fn crate_names_are_what_cargo_and_rust_take() {
        for good in ["my-recovery", "pumps2", "a_b-c", "Rollback"] {
            assert_eq!(check_crate_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("2fast", "start with an ASCII letter"),
            ("-x", "start with an ASCII letter"),
            ("my plugin", "' ' is not allowed"),
            ("pümp", "'ü' is not allowed"),
            ("fn", "Rust keyword"),
            ("self", "Rust keyword"),
            ("std", "part of every plugin's build"),
            ("sprig-sdk", "part of every plugin's build"),
        ] {
            let error = check_crate_name(bad).unwrap_err();
            assert!(
                error.starts_with(&format!("{bad:?} is not a plugin crate name"))
                    && error.contains(why),
                "{bad}: {error}"
            );
        }
        assert!(check_crate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn the_sdk_comes_from_the_flags_then_the_environment_then_the_source_built_from() {
        let elsewhere = Path::new("/nonexistent/sdk");
        let mut with_path = args("p");
        with_path.sdk_path = Some(BUILT_FROM_SDK.into());
        with_path.sdk_git = None;
        assert_eq!(
            choose_sdk(&with_path, Some("https://env".into()), elsewhere),
            Ok(SdkSource::Path(workspace_sdk()))
        );
        let mut with_git = args("p");
        with_git.sdk_git = Some("https://flag".into());
        assert_eq!(
            choose_sdk(&with_git, Some("https://env".into()), elsewhere),
            Ok(SdkSource::Git("https://flag".into()))
        );
        assert_eq!(
            choose_sdk(&args("p"), Some("https://env".into()), elsewhere),
            Ok(SdkSource::Git("https://env".into()))
        );
        assert_eq!(
            choose_sdk(&args("p"), None, Path::new(BUILT_FROM_SDK)),
            Ok(SdkSource::Path(workspace_sdk()))
        );
        let error = choose_sdk(&args("p"), None, elsewhere).unwrap_err();
        assert!(
            error.contains("--sdk-git URL") && error.contains("--sdk-path DIR"),
            "{error}"
        );
        // A directory that is not the sdk is refused, naming it.
        let mut wrong = args("p");
        wrong.sdk_path = Some(Path::new(BUILT_FROM_SDK).join("../gateway"));
        let error = choose_sdk(&wrong, None, elsewhere).unwrap_err();
        assert!(
            error.contains(
                "gateway is not the sprig-sdk crate: its Cargo.toml names another package"
            ),
            "{error}"
        );
    }

    #[test]
    fn the_dependency_line_is_toml_with_the_release_tag() {
        let git = SdkSource::Git("https://example.org/sprig.git".into()).dependency();
        let parsed: toml::Table = toml::from_str(&git).unwrap();
        assert_eq!(
            parsed["sprig-sdk"]["git"].as_str(),
            Some("https://example.org/sprig.git")
        );
        assert_eq!(
            parsed["sprig-sdk"]["tag"].as_str(),
            Some(format!("v{SPRIG_VERSION}").as_str())
        );
        let path = SdkSource::Path(PathBuf::from("/src/a \"b\"/sdk")).dependency();
        let parsed: toml::Table = toml::from_str(&path).unwrap();
        assert_eq!(
            parsed["sprig-sdk"]["path"].as_str(),
            Some("/src/a \"b\"/sdk")
        );
    }

    #[test]
    fn every_placeholder_is_replaced_and_the_manifest_stands_alone() {
        let files = render(
            "my-recovery",
            &SdkSource::Git("https://example.org/s".into()),
        );
        for (file, text) in &files {
            for placeholder in [
                "@NAME@",
                "@LIB@",
                "@SPRIG_VERSION@",
                "@ABI_VERSION@",
                "@SDK_DEPENDENCY@",
            ] {
                assert!(!text.contains(placeholder), "{file} keeps {placeholder}");
            }
        }
        let manifest: toml::Table = toml::from_str(&files[0].1).unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("my-recovery"));
        assert_eq!(
            manifest["lib"]["crate-type"],
            toml::Value::Array(vec!["cdylib".into()])
        );
        assert!(manifest["workspace"].is_table());
        let recovery: toml::Table = toml::from_str(&files[3].1).unwrap();
        assert_eq!(
            recovery["recovery"][0]["plugin"].as_str(),
            Some("target/release/libmy_recovery.so")
        );
    }

    #[test]
    fn a_directory_that_is_not_empty_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("a/b");
        assert_eq!(prepare_dir(&fresh), Ok(()));
        assert_eq!(prepare_dir(&fresh), Ok(()), "an empty directory will do");
        std::fs::write(fresh.join("x"), "").unwrap();
        let error = prepare_dir(&fresh).unwrap_err();
        assert_eq!(
            error,
            format!(
                "{} exists and is not empty: choose another --path, or empty it",
                fresh.display()
            )
        );
        let error = prepare_dir(&fresh.join("x")).unwrap_err();
        assert!(
            error.ends_with("x exists and is not a directory"),
            "{error}"
        );
    }
}
