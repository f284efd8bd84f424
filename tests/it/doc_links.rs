//! Every relative link in README.md and docs/ leads somewhere in the repository: the file or
//! folder exists, stays inside the checkout (a `../` out of it works on one machine and nowhere
//! else), and a `#fragment` into a Markdown file names one of its headings. External links
//! (`https://…`) are not fetched: a test that needs the internet fails for the wrong reasons.
//!
//! `docs/spec/` is a verbatim copy of the specification; its one relative link names a document
//! of the protocol's own repository, not copied, and is left as written.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents checked: README.md, docs/*.md and the folders of docs/ written here.
fn documents() -> Vec<PathBuf> {
    let mut found = vec![root().join("README.md")];
    for dir in ["docs", "docs/vectors"] {
        let entries = std::fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let mut md: Vec<PathBuf> =
            entries.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "md")).collect();
        md.sort();
        found.extend(md);
    }
    found
}

/// The lines outside fenced code blocks, numbered from 1.
fn outside_fences(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((number + 1, line));
        }
    }
    lines
}

/// The prose of a document, line by line: outside code blocks and inline code spans, where
/// `](` is not a link.
fn prose(text: &str) -> Vec<(usize, String)> {
    outside_fences(text)
        .into_iter()
        .map(|(n, line)| (n, line.split('`').step_by(2).collect::<Vec<_>>().join(" ")))
        .collect()
}

/// The targets of inline links `[text](target "title")` and reference definitions `[x]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.trim_start_matches('<').trim_end_matches('>').to_owned());
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some((label, target)) = trimmed.split_once("]:")
        && !label.contains(' ')
    {
        targets.push(target.split_whitespace().next().unwrap_or("").to_owned());
    }
    targets
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// `a/b/../c` → `a/c` without touching the file system; `None` if it climbs above its start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// GitHub's anchors for a Markdown file's headings: lowercase, punctuation dropped, spaces as
/// hyphens, repeats numbered `-1`, `-2`….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in outside_fences(text) {
        let Some(heading) = line.strip_prefix('#') else { continue };
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut candidate = slug.clone();
        let mut n = 0;
        while !seen.insert(candidate.clone()) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
    }
    seen
}

/// What is wrong with `target`, linked from `document`, if anything.
fn broken(root: &Path, document: &Path, target: &str) -> Option<String> {
    let (path, fragment) = target.split_once('#').map_or((target, None), |(p, f)| (p, Some(f)));
    let relative_dir = document.parent().unwrap().strip_prefix(root).unwrap();
    let file = if path.is_empty() {
        document.strip_prefix(root).unwrap().to_owned()
    } else if let Some(absolute) = path.strip_prefix('/') {
        PathBuf::from(absolute)
    } else {
        match normalize(&relative_dir.join(path)) {
            Some(inside) => inside,
            None => return Some("points outside the repository".into()),
        }
    };
    let full = root.join(&file);
    if !full.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    if let Some(fragment) = fragment.filter(|_| file.extension().is_some_and(|x| x == "md")) {
        let text = std::fs::read_to_string(&full).unwrap();
        if !anchors(&text).contains(fragment) {
            return Some(format!("{} has no heading #{fragment}", file.display()));
        }
    }
    None
}

#[test]
fn every_relative_link_in_the_docs_leads_somewhere_in_the_repository() {
    let root = root();
    let mut checked = 0;
    let mut problems = Vec::new();
    for document in documents() {
        let text = std::fs::read_to_string(&document).unwrap();
        for (line, prose) in prose(&text) {
            for target in link_targets(&prose).into_iter().filter(|t| !t.is_empty() && !is_external(t)) {
                checked += 1;
                if let Some(problem) = broken(&root, &document, &target) {
                    let name = document.strip_prefix(&root).unwrap().display();
                    problems.push(format!("{name}:{line}: ({target}) {problem}"));
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} relative links found: is the parser still reading the docs?");
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_tells_a_broken_link_from_a_good_one() {
    let root = root();
    let readme = root.join("README.md");
    assert_eq!(broken(&root, &readme, "docs/protocol.md#authentication"), None);
    assert_eq!(broken(&root, &readme, "helm/enigma"), None);
    assert!(broken(&root, &readme, "docs/protocol.md#no-such-heading").is_some());
    assert!(broken(&root, &readme, "docs/no-such-file.md").is_some());
    assert_eq!(
        broken(&root, &readme, "../shared/spec/enigma-server-spec.md").as_deref(),
        Some("points outside the repository")
    );
    let protocol = root.join("docs/protocol.md");
    assert_eq!(broken(&root, &protocol, "../README.md"), None);
    assert!(broken(&root, &protocol, "../../README.md").is_some());
    assert_eq!(link_targets("see [a](b.md) and [c](d.md \"title\")"), ["b.md", "d.md"]);
    assert_eq!(link_targets("[ref]: e.md"), ["e.md"]);
    assert!(prose("```\n[a](nowhere.md)\n```\n`[b](nowhere.md)`").iter().all(|(_, l)| link_targets(l).is_empty()));
    let headings = anchors("# Title\n## `GET /login/{publicKey}`\n## Title\n```\n# not a heading\n```");
    assert_eq!(headings, BTreeSet::from(["title".into(), "get-loginpublickey".into(), "title-1".into()]));
}
