//! Imports run one way: no file of `src/` imports a file that (through others) imports it back.
//!
//! Each `.rs` file is a node. Files are read as Rust (with `syn`, so strings and comments are
//! not code) and found the way the compiler finds them: from each crate's root through its `mod`
//! declarations, `#[path = "…"]` ones included. A file's edges are the paths its code names:
//! its `use` statements wherever they stand, and every path of two segments or more in its code
//! and in its macro calls' tokens, when the path starts at `crate`, `self`, `super`, a child
//! module or a name a `use` brought in. Each resolves to the file of the deepest module it names
//! (`a/mod.rs` or `a.rs` for `a`, so importing a parent's re-export depends on the parent). An
//! inline module is read as part of its file; test-only modules (`#[cfg(test)]`, inline or not)
//! are not read, and declaring a module (`mod b;`) is not an import of it. Each binary under
//! `src/bin/` is a crate of its own.

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

/// The made-up crate `files` as the test functions take it.
fn crate_of(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
}

#[test]
fn a_path_through_a_child_module_or_an_imported_module_is_an_import() {
    let files = crate_of(&[
        ("lib.rs", "pub mod a;\npub mod link;\npub mod user;\n"),
        ("a/mod.rs", "mod b;\npub struct T;\npub fn f() {\n    b::g();\n}\n"),
        ("a/b.rs", "use super::T;\npub fn g() {}\n"),
        ("link/mod.rs", "pub mod events;\n"),
        ("link/events.rs", "use crate::user::Name;\npub struct X;\n"),
        ("user.rs", "use super::link;\npub struct Name;\nfn f(_: link::events::X) {}\n"),
    ]);
    let expected = vec![vec!["a/b.rs".to_string(), "a/mod.rs".into()], vec!["link/events.rs".into(), "user.rs".into()]];
    assert_eq!(circles(&files), expected);
}

#[test]
fn a_module_with_a_path_attribute_is_its_real_file() {
    // The floor's shape: `main.rs` calls into `redis_floor`, which uses `procfs`, a module whose
    // file lives with another binary. No circle there; one between `procfs` and `redis_floor`.
    let files = crate_of(&[
        (
            "bin/floor/main.rs",
            "#[path = \"../bench/procfs.rs\"]\nmod procfs;\nmod redis_floor;\nfn main() {\n    redis_floor::run();\n}\n",
        ),
        (
            "bin/floor/redis_floor.rs",
            "use crate::procfs;\npub struct Reading;\npub fn run() {\n    procfs::read();\n}\n",
        ),
        ("bin/bench/procfs.rs", "pub fn read() -> crate::redis_floor::Reading {\n    todo!()\n}\n"),
    ]);
    assert_eq!(circles(&files), vec![vec!["bin/bench/procfs.rs".to_string(), "bin/floor/redis_floor.rs".into()]]);
}

#[test]
fn an_indented_use_is_an_import() {
    let files = crate_of(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\npub mod f;\n"),
        ("a.rs", "pub struct A;\npub fn f() {\n    use crate::{b::G, c};\n}\n"),
        ("b.rs", "use crate::a::A;\npub struct G;\n"),
        ("c.rs", "pub fn h() {}\n"),
        ("d/mod.rs", "mod e;\npub struct D;\nfn f() {\n    use self::e::E;\n}\n"),
        ("d/e.rs", "use super::D;\npub struct E;\n"),
        ("f/mod.rs", "mod g;\npub struct F;\nfn f() {\n    use g::G;\n}\n"),
        ("f/g.rs", "use super::F;\npub struct G;\n"),
    ]);
    let expected = vec![
        vec!["a.rs".to_string(), "b.rs".into()],
        vec!["d/e.rs".into(), "d/mod.rs".into()],
        vec!["f/g.rs".into(), "f/mod.rs".into()],
    ];
    assert_eq!(circles(&files), expected);
}

#[test]
fn an_inline_module_is_read_unless_it_is_test_only() {
    let files = crate_of(&[
        ("lib.rs", "pub mod engine;\npub mod telemetry;\n"),
        (
            "telemetry.rs",
            "pub struct Meter;\npub mod metric {\n    use super::Meter;\n    pub fn load() -> crate::engine::Load {\n        todo!()\n    }\n}\n#[cfg(test)]\nmod tests {\n    use crate::engine::Other;\n}\n",
        ),
        ("engine.rs", "use crate::telemetry::Meter;\npub struct Load;\n"),
    ]);
    assert_eq!(circles(&files), vec![vec!["engine.rs".to_string(), "telemetry.rs".into()]]);
}

#[test]
fn strings_and_comments_are_not_code() {
    let files = crate_of(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
        // `a` names `c`, so that a false edge back from `c` would make a circle.
        ("a.rs", "pub fn f() {\n    open(\"redis://host\", crate::b::make());\n    crate::c::g(\"\");\n}\n"),
        ("b.rs", "use crate::a::f;\npub fn make() {}\n"),
        (
            "c.rs",
            concat!(
                "/* crate::a::f\n   and super::a::f */\n",
                "const S: &str = \"crate::a::f\";\n",
                "const R: &str = r#\"a \" crate::a::f\"#;\n",
                "const Q: &[u8] = br\"crate::a::f\";\n",
                "const B: &[u8] = b\"crate::a::f\";\n",
                "const C: char = '\"';\n",
                "const D: u8 = b'\"';\n",
                "fn g<'a>(x: &'a str) -> &'a str {\n    x // \"\n}\n",
                "fn h() -> &'static str {\n    \"super::a::f\"\n}\n",
            ),
        ),
    ]);
    assert_eq!(circles(&files), vec![vec!["a.rs".to_string(), "b.rs".into()]]);
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
/// module path within that crate, as its place under `src/` says. A file no `mod` declares (a
/// fixture's) keeps this place.
fn module_of(file: &str) -> Module {
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

/// A module: its crate (`""` for the library) and its path in that crate.
type Module = (String, Vec<String>);

/// One module's own code (an inline module's is its own): where it is, and what it names.
struct Scope<'a> {
    module: Module,
    file: &'a str,
    /// The paths of its `use` statements, wherever they stand (a function's included).
    uses: Vec<Vec<String>>,
    /// Each name a `use` brings in, with the path it stands for.
    bindings: BTreeMap<String, Vec<String>>,
    /// The paths of two segments or more written in its code and in macro calls' tokens.
    paths: Vec<Vec<String>>,
}

/// The circles among `files`: for each group of files that import one another, one path through
/// all its members in import order, starting at its first file by name.
fn circles(files: &[(String, String)]) -> Vec<Vec<String>> {
    let parsed: BTreeMap<&str, syn::File> = files
        .iter()
        .map(|(path, text)| (path.as_str(), syn::parse_file(text).unwrap_or_else(|e| panic!("{path}: {e}"))))
        .collect();
    let mut crates =
        Crates { parsed: &parsed, modules: BTreeMap::new(), scopes: Vec::new(), test_only: BTreeSet::new() };
    for &file in parsed.keys() {
        let (krate, path) = module_of(file);
        let is_root = path.is_empty() && (file == "lib.rs" || file.starts_with("bin/"));
        if is_root {
            crates.declare((krate, path), file, &parsed[file].items, dir_of(file), dir_of(file));
        }
    }
    // Files no `mod` reaches (a made-up crate's) stand where their place says.
    for &file in parsed.keys() {
        let reached = crates.modules.values().any(|f| *f == file);
        if !reached && !crates.test_only.contains(file) {
            let module = module_of(file);
            if !crates.modules.contains_key(&module) {
                crates.declare(module, file, &parsed[file].items, child_dir(file), dir_of(file));
            }
        }
    }
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = parsed.keys().map(|&f| (f, BTreeSet::new())).collect();
    for scope in &crates.scopes {
        for used in scope.uses.iter().chain(&scope.paths) {
            let Some(target) = crates.resolve(scope, used) else { continue };
            if target != scope.file {
                edges.get_mut(scope.file).unwrap().insert(target);
            }
        }
    }
    strongly_connected(&edges).into_iter().filter(|group| group.len() > 1).map(|group| walk(&edges, &group)).collect()
}

/// The crates of `src/`: which file each module is, and each module's code.
struct Crates<'a> {
    parsed: &'a BTreeMap<&'a str, syn::File>,
    modules: BTreeMap<Module, &'a str>,
    scopes: Vec<Scope<'a>>,
    /// Files only test builds compile (`#[cfg(test)] mod tests;`): not read.
    test_only: BTreeSet<&'a str>,
}

impl<'a> Crates<'a> {
    /// Records `module`, written in `file` as `items`, then the modules it declares: inline ones
    /// as scopes of the same file, others as the file `#[path]` names (relative to `base`) or
    /// `dir/name.rs` or `dir/name/mod.rs`. Test-only modules are left out.
    fn declare(&mut self, module: Module, file: &'a str, items: &'a [syn::Item], dir: String, base: String) {
        self.modules.insert(module.clone(), file);
        let mut scope =
            Scope { module: module.clone(), file, uses: Vec::new(), bindings: BTreeMap::new(), paths: Vec::new() };
        for item in items {
            syn::visit::Visit::visit_item(&mut scope, item);
        }
        self.scopes.push(scope);
        for item in items {
            let syn::Item::Mod(declared) = item else { continue };
            let name = declared.ident.to_string();
            let (krate, mut path) = module.clone();
            path.push(name.clone());
            let found = match path_attribute(&declared.attrs) {
                Some(relative) => normalize(&format!("{base}{relative}")),
                None => [format!("{dir}{name}.rs"), format!("{dir}{name}/mod.rs")]
                    .into_iter()
                    .find(|f| self.parsed.contains_key(f.as_str()))
                    .unwrap_or_default(),
            };
            let found = self.parsed.get_key_value(found.as_str()).map(|(f, _)| *f);
            if is_test_only(&declared.attrs) {
                self.test_only.extend(found);
                continue;
            }
            if let Some((_, content)) = &declared.content {
                // Inside an inline module, a `#[path]` is relative to the module's own folder.
                let inner = format!("{dir}{name}/");
                self.declare((krate, path), file, content, inner.clone(), inner);
            } else if let Some(child) = found {
                self.declare((krate, path), child, &self.parsed[child].items, child_dir(child), dir_of(child));
            }
        }
    }

    /// The file of the deepest module `used` names, seen from `scope`; `None` for paths outside
    /// the crate (`std::…`, other crates, local names).
    fn resolve(&self, scope: &Scope, used: &[String]) -> Option<&'a str> {
        let (krate, mut path) = self.absolute(scope, used, 0)?;
        loop {
            if let Some(file) = self.modules.get(&(krate.clone(), path.clone())) {
                return Some(file);
            }
            path.pop()?;
        }
    }

    /// `used` as a path from its crate's root, following the `use` that brought in its first
    /// name if it has one (`depth` stops a `use` that names itself).
    fn absolute(&self, scope: &Scope, used: &[String], depth: usize) -> Option<Module> {
        let (krate, here) = &scope.module;
        let (first, rest) = used.split_first()?;
        let is_child = |name: &str| {
            let child = here.iter().cloned().chain([name.to_owned()]).collect();
            self.modules.contains_key(&(krate.clone(), child))
        };
        let (mut base, mut rest) = match first.as_str() {
            "crate" => (Vec::new(), rest),
            "self" => (here.clone(), rest),
            "super" => (here[..here.len().checked_sub(1)?].to_vec(), rest),
            child if is_child(child) => (here.clone(), used),
            name if depth < 8 => {
                let (_, mut base) = self.absolute(scope, scope.bindings.get(name)?, depth + 1)?;
                base.extend(rest.iter().cloned());
                return Some((krate.clone(), base));
            }
            _ => return None,
        };
        while let Some(("super", further)) = rest.split_first().map(|(s, r)| (s.as_str(), r)) {
            base.pop()?;
            rest = further;
        }
        base.extend(rest.iter().cloned());
        Some((krate.clone(), base))
    }
}

impl<'ast> syn::visit::Visit<'ast> for Scope<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        for (path, name) in expand(&item.tree) {
            if let Some(name) = name {
                self.bindings.insert(name, path.clone());
            }
            self.uses.push(path);
        }
    }

    /// An inline module is a scope of its own; a module's file is read when it is declared.
    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {}

    /// A visibility, `pub(in crate::a)`, names where an item is seen, not what it uses.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    /// Attributes are not code (a derive's path names a macro, not a module of the crate).
    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            self.paths.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    /// A macro call's arguments are tokens, not syntax: every `a::b…` among them counts
    /// (`$crate::…` in a `macro_rules!` names the crate the macro is called from).
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        let tokens = syn::buffer::TokenBuffer::new2(mac.tokens.clone());
        paths_in_tokens(tokens.begin(), &mut self.paths);
    }
}

/// The `a::b…` paths (two segments or more, not after `::`, `.` or `$`) among a macro's tokens.
fn paths_in_tokens(mut cursor: syn::buffer::Cursor, found: &mut Vec<Vec<String>>) {
    let mut after: Option<char> = None;
    while !cursor.eof() {
        if let Some((inside, _, _, next)) = cursor.any_group() {
            paths_in_tokens(inside, found);
            (cursor, after) = (next, None);
        } else if let Some((ident, next)) = cursor.ident() {
            let mut path = vec![ident.to_string()];
            cursor = next;
            while let Some((_, next)) = cursor.punct().filter(|(p, _)| p.as_char() == ':')
                && let Some((_, next)) = next.punct().filter(|(p, _)| p.as_char() == ':')
                && let Some((ident, next)) = next.ident()
            {
                path.push(ident.to_string());
                cursor = next;
            }
            if path.len() > 1 && !matches!(after, Some(':' | '.' | '$')) {
                found.push(path);
            }
            after = None;
        } else if let Some((punct, next)) = cursor.punct() {
            (cursor, after) = (next, Some(punct.as_char()));
        } else if let Some((_, next)) = cursor.token_tree() {
            (cursor, after) = (next, None);
        }
    }
}

/// The paths a use tree names, each with the name it brings in: `a::{b, c::{d as e, self}}` is
/// `a::b` (`b`), `a::c::d` (`e`) and `a::c` (`c`); a glob, `a::*`, is `a` and brings in no name.
fn expand(tree: &syn::UseTree) -> Vec<(Vec<String>, Option<String>)> {
    match tree {
        syn::UseTree::Path(path) => expand(&path.tree)
            .into_iter()
            .map(|(rest, name)| ([vec![path.ident.to_string()], rest].concat(), name))
            .collect(),
        syn::UseTree::Name(name) if name.ident == "self" => vec![(Vec::new(), None)],
        syn::UseTree::Name(name) => vec![(vec![name.ident.to_string()], Some(name.ident.to_string()))],
        syn::UseTree::Rename(rename) if rename.ident == "self" => vec![(Vec::new(), Some(rename.rename.to_string()))],
        syn::UseTree::Rename(rename) => {
            vec![(vec![rename.ident.to_string()], Some(rename.rename.to_string()).filter(|r| r != "_"))]
        }
        syn::UseTree::Glob(_) => vec![(Vec::new(), None)],
        syn::UseTree::Group(group) => group.items.iter().flat_map(expand).collect(),
    }
}

/// Whether an item is compiled only in test builds: `#[cfg(test)]`.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && matches!(&a.meta, syn::Meta::List(list) if list.tokens.to_string() == "test")
    })
}

/// The file a `#[path = "…"]` attribute names, as written.
fn path_attribute(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find(|a| a.path().is_ident("path")).and_then(|a| match &a.meta {
        syn::Meta::NameValue(syn::MetaNameValue {
            value: syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(path), .. }),
            ..
        }) => Some(path.value()),
        _ => None,
    })
}

/// The folder of `file`, with its trailing `/` (`""` for `src/` itself).
fn dir_of(file: &str) -> String {
    file.rfind('/').map_or(String::new(), |i| file[..=i].to_owned())
}

/// The folder where the modules `file` declares live: its own for `mod.rs`, `lib.rs`, `main.rs`
/// and a binary's root, one named after it otherwise (`a/b.rs` declares `a/b/c.rs`).
fn child_dir(file: &str) -> String {
    let name = file.rsplit('/').next().unwrap_or(file);
    let is_root = file.starts_with("bin/") && file.matches('/').count() == 1;
    if ["mod.rs", "lib.rs", "main.rs"].contains(&name) || is_root {
        dir_of(file)
    } else {
        format!("{}/", file.trim_end_matches(".rs"))
    }
}

/// `path` without its `.` and `..` steps.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "." | "" => {}
            ".." if parts.last().is_some_and(|p| *p != "..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join("/")
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
