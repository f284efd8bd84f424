//! Imports run one way: no file of `src/` imports a file that (through others) imports it back.
//!
//! Each `.rs` file is a node; its file-level `use` statements (`crate::…`, `super::…`,
//! `self::…`, or a child module's name) are its edges, resolved to the file of the deepest module
//! the path names (`a/mod.rs` or `a.rs` for `a`, so importing a parent's re-export depends on the
//! parent). Each binary under `src/bin/` is a crate of its own. `use` statements inside inline
//! modules (`mod tests { … }`) are not file-level and are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Circles tolerated, each as the set of files (relative to `src/`) that form it, with why it is
/// there. None today.
const ALLOWED: &[&[&str]] = &[];

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&src, &src, &mut files);
    assert!(files.len() > 50, "src/ was not read: {} files", files.len());
    let circles: Vec<Vec<String>> = circles(&files)
        .into_iter()
        .filter(|circle| {
            let members: BTreeSet<&str> = circle.iter().map(String::as_str).collect();
            !ALLOWED.iter().any(|allowed| allowed.iter().copied().collect::<BTreeSet<_>>() == members)
        })
        .collect();
    let shown: Vec<String> = circles.iter().map(|circle| format!("{} → {}", circle.join(" → "), circle[0])).collect();
    assert!(circles.is_empty(), "import circles (each file imports the next):\n{}", shown.join("\n"));
}

#[test]
fn a_circle_through_a_re_export_or_a_braced_import_is_found() {
    let files = [
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        ("a/mod.rs", "mod inner;\npub use self::inner::Thing;\n"),
        ("a/inner.rs", "use crate::{\n    b::Other,\n    c,\n};\nfn f() {\n    super::d::g(); // crate::e\n}\n"),
        ("a/d.rs", "pub(in crate::a) fn g() {}\n"),
        ("e.rs", "fn f() -> crate::a::Thing {\n    todo!()\n}\n"),
        ("b.rs", "pub struct Other;\n#[cfg(test)]\nmod tests {\n    use crate::a::Thing;\n}\n"),
        ("c.rs", "use super::a::Thing as Renamed;\n"),
    ];
    let files: Vec<(String, String)> = files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect();
    assert_eq!(circles(&files), vec![vec!["a/inner.rs".to_string(), "c.rs".into(), "a/mod.rs".into()]]);
}

/// Every `.rs` file under `dir`, as (path relative to `src`, text), in a stable order.
fn collect(src: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(src, &path, files);
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let relative = path.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
            files.push((relative, text));
        }
    }
}

/// Which crate a file belongs to (`""` for the library, the binary's name otherwise) and its
/// module path within that crate.
fn module_of(file: &str) -> (String, Vec<String>) {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    let krate = if parts.first().is_some_and(|p| p == "bin") {
        parts.remove(0);
        let name = parts.remove(0);
        if !parts.is_empty() && parts[parts.len() - 1] == "main" {
            parts.pop();
        }
        name
    } else {
        if parts == ["lib"] {
            parts.clear();
        }
        String::new()
    };
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (krate, parts)
}

/// The circles among `files`: for each group of files that import one another, one path through
/// all its members in import order, starting at its first file by name.
fn circles(files: &[(String, String)]) -> Vec<Vec<String>> {
    let modules: BTreeMap<(String, Vec<String>), &str> =
        files.iter().map(|(path, _)| (module_of(path), path.as_str())).collect();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (path, text) in files {
        let (krate, here) = module_of(path);
        let targets = edges.entry(path.as_str()).or_default();
        for used in file_level_uses(text).iter().flat_map(|tree| expand(tree)) {
            let Some(target) = resolve(&modules, &krate, &here, &used) else { continue };
            if target != path {
                targets.insert(target);
            }
        }
    }
    strongly_connected(&edges).into_iter().filter(|group| group.len() > 1).map(|group| walk(&edges, &group)).collect()
}

/// The module paths a file's own code names: the trees of its file-level `use` statements
/// (without `use` and the semicolon), and every `crate::…` or `super::…` path written in its code
/// outside inline modules (`super` means another module there) and comments.
fn file_level_uses(text: &str) -> Vec<String> {
    let mut trees = Vec::new();
    let mut open: Option<String> = None;
    // The closing line of the inline module being skipped (rustfmt puts it at the indentation
    // of its `mod` line).
    let mut skipping: Option<String> = None;
    for line in text.lines() {
        if let Some(end) = &skipping {
            if line == end {
                skipping = None;
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or(line).trim_end();
        let trimmed = code.trim_start();
        let is_inline_mod =
            ["mod ", "pub mod ", "pub(crate) mod ", "pub(super) mod "].iter().any(|p| trimmed.starts_with(p))
                && trimmed.ends_with('{');
        if is_inline_mod {
            skipping = Some(format!("{}}}", &code[..code.len() - trimmed.len()]));
            continue;
        }
        if let Some(tree) = open.as_mut() {
            tree.push_str(code.trim());
        } else if let Some(rest) =
            ["pub(crate) use ", "pub(super) use ", "pub use ", "use "].iter().find_map(|p| code.strip_prefix(p))
        {
            open = Some(rest.trim().to_owned());
        } else {
            trees.extend(paths_in(code));
        }
        if let Some(tree) = open.take_if(|tree| tree.ends_with(';')) {
            trees.push(tree.trim_end_matches(';').to_owned());
        }
    }
    trees
}

/// The `crate::…` and `super::…` paths written in a line of code.
fn paths_in(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(root).map(|i| from + i) {
            from = at + root.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                continue;
            }
            // A visibility, `pub(in crate::a)`, names where an item is seen, not what it uses.
            if code[..at].trim_end().ends_with("(in") {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |i| at + i);
            found.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    found
}

/// The paths a use tree names: `a::{b, c::{d, self}}` is `a::b`, `a::c::d` and `a::c`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree);
        let mut segments: Vec<String> =
            path.split("::").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
        if segments.last().is_some_and(|s| s == "self" || s == "*") && segments.len() > 1 {
            segments.pop();
        }
        return vec![segments];
    };
    let prefix: Vec<String> = tree[..open].split("::").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|part| !part.trim().is_empty())
        .flat_map(expand)
        .map(|rest| prefix.iter().cloned().chain(rest).collect())
        .collect()
}

/// The file of the deepest module `used` names, seen from the module `here` of `krate`; `None`
/// for paths outside the crate (`std::…`, other crates).
fn resolve<'a>(
    modules: &BTreeMap<(String, Vec<String>), &'a str>,
    krate: &str,
    here: &[String],
    used: &[String],
) -> Option<&'a str> {
    let (first, rest) = used.split_first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        child => {
            let mut child_path = here.to_vec();
            child_path.push(child.to_owned());
            if !modules.contains_key(&(krate.to_owned(), child_path)) {
                return None; // another crate
            }
            here.to_vec()
        }
    };
    let mut rest = if first == "crate" || first == "self" || first == "super" { rest } else { used };
    while let Some(("super", further)) = rest.split_first().map(|(s, r)| (s.as_str(), r)) {
        base.pop();
        rest = further;
    }
    let mut path = base;
    path.extend(rest.iter().cloned());
    while !path.is_empty() {
        if let Some(file) = modules.get(&(krate.to_owned(), path.clone())) {
            return Some(file);
        }
        path.pop();
    }
    modules.get(&(krate.to_owned(), path)).copied()
}

/// The strongly connected groups of the graph (Tarjan), each sorted.
fn strongly_connected<'a>(edges: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(node: &'a str, edges: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(node, i);
        s.low.insert(node, i);
        s.stack.push(node);
        s.on_stack.insert(node);
        for &next in edges.get(node).into_iter().flatten() {
            if !s.index.contains_key(next) {
                visit(next, edges, s);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut group = Vec::new();
            while let Some(member) = s.stack.pop() {
                s.on_stack.remove(member);
                group.push(member);
                if member == node {
                    break;
                }
            }
            group.sort();
            s.groups.push(group);
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for &node in edges.keys() {
        if !state.index.contains_key(node) {
            visit(node, edges, &mut state);
        }
    }
    state.groups.sort();
    state.groups
}

/// A path from the group's first file through every member of the group, each step an import
/// (a member may repeat when the group is not one simple ring).
fn walk(edges: &BTreeMap<&str, BTreeSet<&str>>, group: &[&str]) -> Vec<String> {
    let members: BTreeSet<&str> = group.iter().copied().collect();
    let mut path = vec![group[0]];
    let mut unvisited: BTreeSet<&str> = members.iter().copied().filter(|m| *m != group[0]).collect();
    // Walk to each unvisited member by the shortest route, then back to the start.
    while let Some(&goal) = unvisited.iter().next() {
        let route = shortest(edges, &members, path[path.len() - 1], goal);
        for step in route {
            unvisited.remove(step);
            path.push(step);
        }
    }
    let back = shortest(edges, &members, path[path.len() - 1], group[0]);
    path.extend(back.iter().take(back.len().saturating_sub(1)));
    path.into_iter().map(str::to_owned).collect()
}

/// The steps after `from` on a shortest import path to `to` inside `members`.
fn shortest<'a>(
    edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    members: &BTreeSet<&'a str>,
    from: &'a str,
    to: &'a str,
) -> Vec<&'a str> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(node) = queue.pop_front() {
        for &next in edges.get(node).into_iter().flatten().filter(|n| members.contains(*n)) {
            if next == to {
                let mut route = vec![to];
                let mut at = node;
                while at != from {
                    route.push(at);
                    at = came_from[at];
                }
                route.reverse();
                return route;
            }
            if next != from && !came_from.contains_key(next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    Vec::new()
}
