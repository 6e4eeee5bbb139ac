//! Keeps the gateway's module graph the shape `src/lib.rs` draws: no cycle between its top-level modules,
//! and no dependency pointing up the layers listed there.
//!
//! It reads every `src/**.rs` (no build needed), strips comments and string literals, and takes each
//! `crate::module` path (in `use` statements, `use crate::{a, b}` groups and inline paths) and each
//! `super::` path that climbs out of a top-level module as an edge between top-level modules. Tests inside
//! the modules count too: a test that needs a module's neighbour is a dependency like any other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers of `src/lib.rs`, lowest first: a module may use modules of its own layer or of a lower one,
/// never of a higher one. Keep in step with the list in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["topic_filter", "config", "model", "metrics"],
    &["plugins", "store"],
    &["jobs"],
    &["auth"],
    &["broker"],
    &["recovery", "notify", "device_api", "control"],
    &["uplink", "http_api"],
    &["daemon"],
    &["cli"],
];

/// Cycles allowed for a while (none now), each named by the edge that closes it (`from` uses `to`, which
/// already reaches `from`) and why that edge is there. The test allows exactly these edges against the
/// graph: it fails on any other cycle, and on a listed edge that no longer closes a cycle. Keep it empty:
/// it is here for a refactoring that has to land in steps.
const KNOWN_CYCLES: &[(&str, &str, &str)] = &[];

#[test]
fn the_modules_form_no_cycle_but_the_known_ones() {
    let graph = ModuleGraph::read(&source_dir());
    let known = known_cycle_edges();
    let mut problems = Vec::new();
    for cycle in graph.without(&known).cycles() {
        problems.push(format!(
            "module cycle {}:\n{}",
            arrow_path(&cycle),
            graph.evidence(&cycle)
        ));
    }
    for (from, to) in &known {
        if !graph.edges.contains_key(&(from.clone(), to.clone())) || !graph.reaches(to, from) {
            problems.push(format!(
                "{from} -> {to} no longer closes a cycle: remove it from KNOWN_CYCLES in {}",
                file!()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn dependencies_point_down_the_layers_of_lib_rs() {
    let graph = ModuleGraph::read(&source_dir());
    let layer_of = layer_index();
    let modules: BTreeSet<&String> = graph.modules.iter().collect();
    let layered: BTreeSet<&String> = layer_of.keys().collect();
    assert_eq!(
        modules, layered,
        "LAYERS must name each module of src/lib.rs exactly once"
    );

    let known = known_cycle_edges();
    let mut problems = Vec::new();
    for ((from, to), sites) in &graph.without(&known).edges {
        if layer_of[from] < layer_of[to] {
            let (from_layer, to_layer) = (layer_of[from], layer_of[to]);
            problems.push(format!(
                "{from} (layer {from_layer}) uses {to} (layer {to_layer}): {}",
                sites.join(", ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "dependencies pointing up the layers of src/lib.rs:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_parser_sees_paths_and_skips_comments_and_strings() {
    let text = r#"
        use crate::auth::Authenticator; // crate::cli in a comment
        use crate::{config::Config, store::{self, Store}};
        /* crate::daemon /* nested */ crate::daemon */
        /// crate::deletion in a doc comment
        fn f() -> char { let _ = "crate::notify"; let _ = r"crate::notify"; let _: &'static str = ""; '"' }
        fn g() { crate::jobs::model::now(); super::super::broker::x(); }
    "#;
    let code = strip_comments_and_strings(text);
    let used: BTreeSet<String> = used_modules(&code, &["topic_filter".into(), "inner".into()])
        .into_iter()
        .map(|(module, _)| module)
        .collect();
    let expected = ["auth", "config", "store", "jobs", "broker"].map(String::from);
    assert_eq!(used, BTreeSet::from(expected));
}

/// Edges between top-level modules, with where each is used (`file:line`).
struct ModuleGraph {
    modules: Vec<String>,
    edges: BTreeMap<(String, String), Vec<String>>,
}

impl ModuleGraph {
    fn read(src: &Path) -> ModuleGraph {
        let modules = top_level_modules(
            &std::fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs"),
        );
        let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for file in rust_files(src) {
            let relative = file.strip_prefix(src).unwrap();
            let module_path = module_path(relative);
            let Some(top) = module_path.first().filter(|top| modules.contains(top)) else {
                continue; // lib.rs and main.rs: the crate root and the binary, not a module
            };
            let code = strip_comments_and_strings(&std::fs::read_to_string(&file).unwrap());
            for (used, line) in used_modules(&code, &module_path) {
                if &used != top && modules.contains(&used) {
                    let site = format!("src/{}:{line}", relative.display());
                    edges.entry((top.clone(), used)).or_default().push(site);
                }
            }
        }
        ModuleGraph { modules, edges }
    }

    /// The same graph less `edges`.
    fn without(&self, edges: &BTreeSet<(String, String)>) -> ModuleGraph {
        let kept = self.edges.iter().filter(|(edge, _)| !edges.contains(edge));
        ModuleGraph {
            modules: self.modules.clone(),
            edges: kept
                .map(|(edge, sites)| (edge.clone(), sites.clone()))
                .collect(),
        }
    }

    /// Whether a path of one or more edges leads from `from` to `to`.
    fn reaches(&self, from: &str, to: &str) -> bool {
        let mut seen = BTreeSet::new();
        let mut frontier = vec![from.to_string()];
        while let Some(module) = frontier.pop() {
            for next in self.successors(&module) {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    frontier.push(next.clone());
                }
            }
        }
        false
    }

    fn successors<'a>(&'a self, module: &'a str) -> impl Iterator<Item = &'a String> {
        self.edges
            .keys()
            .filter(move |(from, _)| from == module)
            .map(|(_, to)| to)
    }

    /// Every elementary cycle, each found once: from each module, paths through modules that sort after
    /// it back to it. The graph is a dozen modules, so the search is small.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut cycles = Vec::new();
        for start in &self.modules {
            let mut path = vec![start.clone()];
            self.extend_cycles(start, &mut path, &mut cycles);
        }
        cycles
    }

    fn extend_cycles(&self, start: &String, path: &mut Vec<String>, cycles: &mut Vec<Vec<String>>) {
        let last = path.last().unwrap().clone();
        for next in self.successors(&last) {
            if next == start {
                cycles.push(path.clone());
            } else if next > start && !path.contains(next) {
                path.push(next.clone());
                self.extend_cycles(start, path, cycles);
                path.pop();
            }
        }
    }

    /// Where each edge of a cycle is used, so the failure says which lines to change.
    fn evidence(&self, cycle: &[String]) -> String {
        cycle_edges(cycle)
            .map(|(from, to)| {
                let sites = &self.edges[&(from.clone(), to.clone())];
                let shown: Vec<&str> = sites.iter().take(3).map(String::as_str).collect();
                let more = if sites.len() > 3 {
                    format!(" and {} more", sites.len() - 3)
                } else {
                    String::new()
                };
                format!("  {from} -> {to}: {}{more}", shown.join(", "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn layer_index() -> BTreeMap<String, usize> {
    let mut index = BTreeMap::new();
    for (layer, modules) in LAYERS.iter().enumerate() {
        for module in *modules {
            assert!(
                index.insert(module.to_string(), layer).is_none(),
                "{module} is in LAYERS twice"
            );
        }
    }
    index
}

fn known_cycle_edges() -> BTreeSet<(String, String)> {
    KNOWN_CYCLES
        .iter()
        .map(|(from, to, _why)| (from.to_string(), to.to_string()))
        .collect()
}

fn cycle_edges(cycle: &[String]) -> impl Iterator<Item = (&String, &String)> {
    cycle.iter().zip(cycle.iter().cycle().skip(1))
}

fn arrow_path(cycle: &[String]) -> String {
    let mut names = cycle.to_vec();
    names.push(cycle[0].clone());
    names.join(" -> ")
}

/// The `mod` declarations of the crate root.
fn top_level_modules(lib_rs: &str) -> Vec<String> {
    strip_comments_and_strings(lib_rs)
        .lines()
        .filter_map(|line| {
            let line = line.trim().strip_prefix("pub ").unwrap_or(line.trim());
            line.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(|name| name.trim().to_string())
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The module a file holds, from its path under `src/`: `store/mod.rs` is `store`, `auth/rules.rs` is
/// `auth::rules`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

/// The top-level modules a file's code names, with the line of each use: `crate::x`, each item of
/// `crate::{x, y::z}`, and `super::` paths that climb to the crate root.
fn used_modules(code: &str, module_path: &[String]) -> Vec<(String, usize)> {
    let mut used = Vec::new();
    for (index, line) in code.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = next_root_path(rest, module_path) {
            rest = &rest[at.after..];
            if let Some(group) = rest.strip_prefix('{') {
                let inside = group_text(group, code, index);
                used.extend(
                    group_heads(&inside)
                        .into_iter()
                        .map(|module| (module, index + 1)),
                );
            } else {
                used.push((identifier(rest).to_string(), index + 1));
            }
        }
    }
    used
}

struct RootPath {
    /// Byte offset just after the path's root (`crate::`, or the `super::`s that reach the root).
    after: usize,
}

/// The next path in `line` that starts at the crate root.
fn next_root_path(line: &str, module_path: &[String]) -> Option<RootPath> {
    let mut from = 0;
    loop {
        let crate_at = find_word(line, "crate::", from);
        let super_at = find_word(line, "super::", from);
        let super_first = match (crate_at, super_at) {
            (None, None) => return None,
            (Some(c), Some(s)) => s < c,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        match (crate_at, super_at) {
            (Some(c), _) if !super_first => {
                return Some(RootPath {
                    after: c + "crate::".len(),
                })
            }
            (_, Some(s)) => {
                let mut end = s;
                let mut climbs = 0;
                while line[end..].starts_with("super::") {
                    end += "super::".len();
                    climbs += 1;
                }
                if climbs >= module_path.len() {
                    return Some(RootPath { after: end });
                }
                from = end;
            }
            _ => unreachable!(),
        }
    }
}

/// Where `word` starts in `line` at or after `from`, not as the tail of a longer identifier.
fn find_word(line: &str, word: &str, from: usize) -> Option<usize> {
    let mut start = from;
    while let Some(offset) = line[start..].find(word) {
        let at = start + offset;
        let before = line[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return Some(at);
        }
        start = at + word.len();
    }
    None
}

/// The text of a `{ ... }` group that opened just before `rest`, across lines if need be.
fn group_text(rest: &str, code: &str, line_index: usize) -> String {
    let following = code.lines().skip(line_index + 1);
    let text: String = std::iter::once(rest)
        .chain(following)
        .collect::<Vec<_>>()
        .join("\n");
    let mut depth = 1;
    for (at, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return text[..at].to_string();
        }
    }
    text
}

/// The first identifier of each comma-separated item at the top of a group: `a, b::{c, d}` gives a, b.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && depth == 0 && (c.is_alphabetic() || c == '_') => {
                heads.push(identifier(&group[at..]).to_string());
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The code with comments (line, block, doc) and the contents of string and char literals blanked out,
/// line breaks kept so line numbers still match.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            i = skip_block_comment(&chars, i, &mut out);
        } else if let Some(hashes) = raw_string_start(rest) {
            i = skip_raw_string(&chars, i, hashes, &mut out);
        } else if chars[i] == '"' {
            i = skip_string(&chars, i, &mut out);
        } else if let Some(len) = char_literal_len(rest) {
            out.push_str("' '");
            i += len;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn skip_block_comment(chars: &[char], mut i: usize, out: &mut String) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        if chars[i..].starts_with(&['/', '*']) {
            depth += 1;
            i += 2;
        } else if chars[i..].starts_with(&['*', '/']) {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            if chars[i] == '\n' {
                out.push('\n');
            }
            i += 1;
        }
    }
    i
}

/// `r"`, `r#"`, `br##"`...: the number of `#`s, if a raw string starts here.
fn raw_string_start(rest: &[char]) -> Option<usize> {
    let after_b = if rest.first() == Some(&'b') {
        &rest[1..]
    } else {
        rest
    };
    let after_r = after_b.strip_prefix(&['r'])?;
    let hashes = after_r.iter().take_while(|&&c| c == '#').count();
    (after_r.get(hashes) == Some(&'"')).then_some(hashes)
}

fn skip_raw_string(chars: &[char], mut i: usize, hashes: usize, out: &mut String) -> usize {
    while chars[i] != '"' {
        i += 1;
    }
    i += 1;
    out.push_str("\"\"");
    while i < chars.len() {
        if chars[i] == '"'
            && chars[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        if chars[i] == '\n' {
            out.push('\n');
        }
        i += 1;
    }
    i
}

fn skip_string(chars: &[char], mut i: usize, out: &mut String) -> usize {
    i += 1;
    out.push_str("\"\"");
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            '\n' => {
                out.push('\n');
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// The length of a char literal starting here (`'a'`, `'\n'`, `'\u{7f}'`), or None for a lifetime.
fn char_literal_len(rest: &[char]) -> Option<usize> {
    if rest.first() != Some(&'\'') {
        return None;
    }
    if rest.get(1) == Some(&'\\') {
        let close = rest.iter().skip(2).position(|&c| c == '\'')?;
        return Some(close + 3);
    }
    (rest.get(2) == Some(&'\'')).then_some(3)
}
