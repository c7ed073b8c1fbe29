//! The code's layering: no module of the proxy or of the Wasm host uses a module that uses
//! it back, directly or through others (issue 10). A cycle fails the test, naming the modules
//! in it and the references that close it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules of a crate (`request::forward`), from the files under `src`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The paths a file names through `crate::` and `super::` (one level), `use` groups included.
fn references(text: &str) -> Vec<(bool, Vec<String>)> {
    // Unit tests may reach anywhere.
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = Vec::new();
    for (root, is_super) in [("crate::", false), ("super::", true)] {
        for (at, _) in text.match_indices(root) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &text[at + root.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let path = item.split_whitespace().next().unwrap_or_default();
                    if !path.is_empty() {
                        out.push((is_super, path.split("::").map(str::to_owned).collect()));
                    }
                }
                continue;
            }
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let path: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if !path.is_empty() {
                out.push((is_super, path));
            }
        }
    }
    out
}

/// Module `a` uses module `b`, for every `a` and `b` of the crate.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let resolve = |segments: &[String]| {
        (1..=segments.len())
            .rev()
            .map(|k| segments[..k].join("::"))
            .find(|m| modules.contains_key(m))
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &modules {
        let text = std::fs::read_to_string(path).unwrap();
        let own: Vec<String> = module.split("::").map(str::to_owned).collect();
        for (is_super, path) in references(&text) {
            let full = if is_super {
                let mut base = own[..own.len() - 1].to_vec();
                base.extend(path);
                base
            } else {
                path
            };
            let target = resolve(&full).or_else(|| {
                // `super::Item` in a submodule names its parent module.
                (is_super && own.len() > 1).then(|| own[..own.len() - 1].join("::"))
            });
            if let Some(target) = target
                && target != *module
                && !module.starts_with(&format!("{target}::"))
            {
                graph.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    graph
}

/// Groups of modules that reach each other (Tarjan's strongly connected components).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    group.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

fn assert_acyclic(crate_src: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate_src);
    let graph = edges(&src);
    assert!(graph.len() > 5, "{crate_src}: modules were found");
    let found = cycles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|group| {
            let inside: Vec<String> = group
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| group.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            inside.join(", ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "{crate_src}: modules that use each other: {described:#?}"
    );
}

#[test]
fn the_proxys_modules_form_no_cycle() {
    assert_acyclic("src");
}

#[test]
fn the_wasm_hosts_modules_form_no_cycle() {
    assert_acyclic("host/src");
}

#[test]
fn a_cycle_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("a.rs", "use crate::b::Thing;\n");
    write("b.rs", "pub fn f() { crate::c::g() }\n");
    write(
        "c.rs",
        "use crate::{a, d};\n#[cfg(test)]\nmod tests { use crate::e; }\n",
    );
    write("d.rs", "");
    write("e.rs", "use crate::a;\n");
    let graph = edges(dir.path());
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
    assert!(!graph.contains_key("d"));
}
