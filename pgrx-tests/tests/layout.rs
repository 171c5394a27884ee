//! The extension's folders are its architecture: each may use only the folders below it, and
//! no module anywhere may reach back, through any chain of uses, to one that uses it. This
//! reads src/ and fails on the first use that breaks either rule, naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom: a folder may use the ones after it, never the ones before.
const LAYERS: [&str; 7] = [
    "api",
    "control",
    "reconcile",
    "data",
    "rpc",
    "catalog",
    "pg",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/data/queue/mod.rs` → `data::queue`; `src/lib.rs` → `` (the crate root).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).expect("a file under src/");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file that ships: without comments and without its `#[cfg(test)]` part
/// (tests may reach anywhere).
fn shipped_code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b::c` path in `code`, expanded through `use crate::{a, b::{c, d}}` groups.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        expand(rest, Vec::new(), &mut paths);
    }
    paths
}

fn expand(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    let mut t = text;
    loop {
        if let Some(inner) = t.strip_prefix('{') {
            let end = matching_brace(inner);
            for part in split_top_level(&inner[..end]) {
                expand(part.trim(), path.clone(), out);
            }
            return;
        }
        let ident: String = t
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        t = &t[ident.len()..];
        path.push(ident);
        match t.strip_prefix("::") {
            Some(next) => t = next,
            None => break,
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

fn matching_brace(text: &str) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Each module and the modules it uses.
type Uses = BTreeMap<String, BTreeSet<String>>;
/// For each use between two modules, the file and path that make it.
type Evidence = BTreeMap<(String, String), String>;

/// The module graph: each module and the modules it uses (the longest module path each
/// `crate::` path starts with; its own ancestors and descendants do not count).
fn graph() -> (Uses, Evidence) {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let modules: BTreeMap<String, PathBuf> =
        files.iter().map(|f| (module_of(f), f.clone())).collect();
    let mut uses = Uses::new();
    let mut evidence = Evidence::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("a source file is readable");
        let targets = uses.entry(module.clone()).or_default();
        for path in crate_paths(&shipped_code(&text)) {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| modules.contains_key(m));
            let Some(target) = target else { continue };
            let related = target == *module
                || target.starts_with(&format!("{module}::"))
                || module.starts_with(&format!("{target}::"));
            if !related && !target.is_empty() {
                evidence
                    .entry((module.clone(), target.clone()))
                    .or_insert_with(|| {
                        format!("{} uses crate::{}", file.display(), path.join("::"))
                    });
                targets.insert(target);
            }
        }
    }
    (uses, evidence)
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

#[test]
fn every_folder_uses_only_the_folders_below_it() {
    let (uses, evidence) = graph();
    let mut wrong = Vec::new();
    for (module, targets) in &uses {
        let Some(from) = layer_of(module) else {
            continue;
        };
        for target in targets {
            if layer_of(target).is_some_and(|to| to < from) {
                wrong.push(evidence[&(module.clone(), target.clone())].clone());
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses that point up the layers {LAYERS:?}:\n{}",
        wrong.join("\n")
    );
    // Every top-level module is one of the layers (a new folder takes its place in LAYERS).
    for module in uses.keys().filter(|m| !m.is_empty()) {
        assert!(
            layer_of(module).is_some(),
            "module {module} is in no layer: add it to LAYERS"
        );
    }
}

#[test]
fn no_module_reaches_back_to_itself() {
    let (uses, evidence) = graph();
    // Depth-first search for a cycle; report its first one with the uses that make it.
    fn visit(
        m: &str,
        uses: &Uses,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.to_string());
        for t in uses.get(m).into_iter().flatten() {
            if let Some(c) = visit(t, uses, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in uses.keys() {
        if let Some(cycle) = visit(m, &uses, &mut Vec::new(), &mut done) {
            let why: Vec<String> = cycle
                .windows(2)
                .map(|w| evidence[&(w[0].clone(), w[1].clone())].clone())
                .collect();
            panic!("module cycle {}:\n{}", cycle.join(" -> "), why.join("\n"));
        }
    }
}

#[test]
fn the_scanner_sees_grouped_and_nested_uses() {
    let paths = crate_paths(
        "use crate::{pg::{spi, sql::ident}, catalog::peer};\nlet x = crate::data::wire::SETTINGS;",
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        [
            "pg::spi",
            "pg::sql::ident",
            "catalog::peer",
            "data::wire::SETTINGS"
        ]
    );
    assert_eq!(
        shipped_code("let a = 1; // crate::api\n#[cfg(test)]\ncrate::api"),
        "let a = 1; "
    );
}
