//! Architecture checks that run with `cargo test`: no two files of `src/` import each other in
//! a circle, and the pure modules (planning, schema, decisions, the wire contract, the key
//! hash) do no I/O and read no clock. Plain Rust over the source text, no dependency: a small
//! tokenizer (comments and string literals skipped), `use` trees and `crate::`/`super::`/
//! `self::` paths resolved to the file that defines the item (following re-exports of
//! `mod.rs`/`lib.rs`), and Tarjan's strongly connected components.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// The pure modules: a path ending in `/` is a folder, else one file.
const PURE: &[&str] = &[
    "src/plan/",
    "src/schema/",
    "src/decide/",
    "src/protocol/",
    "src/routing/keyhash.rs",
];

#[test]
fn no_import_cycle_between_files_of_src() {
    let crate_ = Crate::parse(read_src());
    let circles = crate_.circles();
    assert!(
        circles.is_empty(),
        "files of src/ import each other in a circle, so none of them can be read, tested or \
         changed alone:\n\n{}\nBreak each circle: move the type or function that ties two files \
         into the file that owns it, or into a small new module both can import, named for what \
         it is in the database's own words (not util/helper/common). A parent's mod.rs may \
         re-export it under its old path.",
        circles.join("\n")
    );
}

#[test]
fn pure_modules_do_no_io_and_read_no_clock() {
    let crate_ = Crate::parse(read_src());
    let found = crate_.impurities(PURE);
    assert!(
        found.is_empty(),
        "the pure modules ({}) must not use an API client, an async runtime or the clock \
         outside #[cfg(test)] code:\n\n{}\n\nDecide from values: let the caller (a reconciler, \
         the agent, git-sync) do the I/O and read the clock, and pass what it found — and `now` — \
         in as arguments.",
        PURE.join(", "),
        found.join("\n")
    );
}

/// Every `.rs` file under `src/`, as (path relative to the crate, text).
fn read_src() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let relative = path.strip_prefix(root).expect("under the crate");
                out.push((relative.to_string_lossy().replace('\\', "/"), text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), root, &mut files);
    files
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug)]
struct Token {
    text: String,
    line: usize,
}

fn is_ident(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, numbers, `::` and single punctuation characters, with their lines; comments,
/// string, byte-string and character literals are dropped (lifetimes too).
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    // Skips a quoted literal whose opening quote is at `i`; returns the index after it.
    let skip_quoted = |mut i: usize, line: &mut usize| {
        i += 1;
        while i < chars.len() && chars[i] != '"' {
            if chars[i] == '\\' {
                i += 1;
            }
            if at(i) == '\n' {
                *line += 1;
            }
            i += 1;
        }
        i + 1
    };
    // Skips a raw literal `r#…"…"#…` whose `r` is at `i`.
    let skip_raw = |mut i: usize, line: &mut usize| {
        i += 1;
        let mut hashes = 0;
        while at(i) == '#' {
            hashes += 1;
            i += 1;
        }
        i += 1;
        loop {
            if i >= chars.len() {
                return i;
            }
            if chars[i] == '\n' {
                *line += 1;
            }
            if chars[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                return i + 1 + hashes;
            }
            i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_quoted(i, &mut line);
        } else if (c == 'b' || c == 'c') && at(i + 1) == '"' {
            i = skip_quoted(i + 1, &mut line);
        } else if c == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && matches!(at(i + 2), '"' | '#')))
        {
            i = skip_raw(i, &mut line);
        } else if (c == 'b' || c == 'c') && at(i + 1) == 'r' && matches!(at(i + 2), '"' | '#') {
            i = skip_raw(i + 1, &mut line);
        } else if c == 'b' && at(i + 1) == '\'' {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // Quote, backslash and the escaped character, then up to the closing quote.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or label: drop the quote and its name.
                i += 1;
                while at(i).is_alphanumeric() || at(i) == '_' {
                    i += 1;
                }
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = if c == 'r' && at(i + 1) == '#' {
                i + 2
            } else {
                i
            };
            i = start;
            while at(i).is_alphanumeric() || at(i) == '_' {
                i += 1;
            }
            tokens.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            tokens.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    tokens
}

/// The tokens outside `#[cfg(test)]` items, and the names of `#[cfg(test)] mod x;` children.
fn strip_test_code(tokens: Vec<Token>) -> (Vec<Token>, BTreeSet<String>) {
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    let is_cfg_test = |i: usize| {
        ["#", "[", "cfg", "(", "test", ")", "]"]
            .iter()
            .enumerate()
            .all(|(k, want)| text(i + k) == *want)
    };
    // `#![cfg(test)]` at the top: the whole file is test code.
    if text(0) == "#" && text(1) == "!" && text(2) == "[" && text(3) == "cfg" && text(5) == "test" {
        return (Vec::new(), BTreeSet::new());
    }
    let mut kept = Vec::new();
    let mut test_children = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        if !is_cfg_test(i) {
            kept.push(tokens[i].clone());
            i += 1;
            continue;
        }
        i += 7;
        // Further attributes of the same item.
        while text(i) == "#" && text(i + 1) == "[" {
            let mut depth = 0;
            i += 1;
            loop {
                match text(i) {
                    "[" => depth += 1,
                    "]" => depth -= 1,
                    "" => break,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
        }
        // `mod x;` (possibly `pub mod x;`): a test-only file.
        let mut j = i;
        while matches!(text(j), "pub" | "(" | "crate" | "super" | ")") {
            j += 1;
        }
        if text(j) == "mod" && text(j + 2) == ";" {
            test_children.insert(text(j + 1).to_owned());
            i = j + 3;
            continue;
        }
        // Any other item: up to a `;` at depth 0, or the `}` closing its body.
        let mut depth = 0i32;
        while i < tokens.len() {
            match text(i) {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" => depth -= 1,
                "}" => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                ";" if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    (kept, test_children)
}

// ---------------------------------------------------------------------------------------------
// Files, `use` trees and paths

/// One name a `use` brings into scope (or `*`).
#[derive(Clone, Debug)]
struct Use {
    /// The path as written (`crate`, `super`, `self` and all).
    path: Vec<String>,
    /// The name it is visible under (`None` for a glob).
    name: Option<String>,
    line: usize,
}

/// A path written in code, outside `use`.
#[derive(Clone, Debug)]
struct InlinePath {
    path: Vec<String>,
}

struct File {
    /// Relative to the crate, e.g. `src/agent/node.rs`.
    path: String,
    /// Its module path (`["agent", "node"]`; `[]` for `lib.rs`).
    module: Vec<String>,
    tokens: Vec<Token>,
    uses: Vec<Use>,
    inline: Vec<InlinePath>,
    /// Names of items defined in the file (any depth).
    defines: BTreeSet<String>,
    test_children: BTreeSet<String>,
}

/// Parses the `use` tree starting at `i` under `prefix`; returns the index after it.
fn parse_use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<Use>,
) -> usize {
    let text = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
    let line = tokens.get(i).map_or(0, |t| t.line);
    let mut path = prefix;
    loop {
        match text(i) {
            "::" => i += 1,
            "{" => {
                i += 1;
                while !matches!(text(i), "}" | "") {
                    i = parse_use_tree(tokens, i, path.clone(), out);
                    if text(i) == "," {
                        i += 1;
                    }
                }
                return i + 1;
            }
            "*" => {
                out.push(Use {
                    path,
                    name: None,
                    line,
                });
                return i + 1;
            }
            segment if is_ident(segment) => {
                path.push(segment.to_owned());
                i += 1;
                if text(i) == "::" {
                    continue;
                }
                if path.last().is_some_and(|s| s == "self") {
                    path.pop();
                }
                let mut name = path.last().cloned();
                if text(i) == "as" {
                    name = Some(text(i + 1).to_owned());
                    i += 2;
                }
                out.push(Use { path, name, line });
                return i;
            }
            _ => return i,
        }
    }
}

impl File {
    fn parse(path: String, module: Vec<String>, text: &str) -> File {
        let (tokens, test_children) = strip_test_code(tokenize(text));
        let t = |i: usize| tokens.get(i).map_or("", |t| t.text.as_str());
        let mut uses = Vec::new();
        let mut inline = Vec::new();
        let mut defines = BTreeSet::new();
        let mut i = 0;
        while i < tokens.len() {
            let word = t(i);
            if word == "use" {
                let end = parse_use_tree(&tokens, i + 1, Vec::new(), &mut uses);
                i = end.max(i + 1);
                continue;
            }
            if matches!(
                word,
                "fn" | "struct" | "enum" | "type" | "trait" | "const" | "static" | "mod" | "union"
            ) && is_ident(t(i + 1))
            {
                defines.insert(t(i + 1).to_owned());
            }
            if word == "macro_rules" && t(i + 1) == "!" {
                defines.insert(t(i + 2).to_owned());
            }
            let starts_path = is_ident(word)
                && t(i + 1) == "::"
                && i.checked_sub(1)
                    .is_none_or(|p| !matches!(t(p), "::" | "$" | "in"));
            if starts_path {
                let mut path = vec![word.to_owned()];
                let mut j = i + 1;
                while t(j) == "::" && is_ident(t(j + 1)) {
                    path.push(t(j + 1).to_owned());
                    j += 2;
                }
                inline.push(InlinePath { path });
                i = j;
                continue;
            }
            i += 1;
        }
        File {
            path,
            module,
            tokens,
            uses,
            inline,
            defines,
            test_children,
        }
    }
}

/// Where a path leads inside the crate.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// A module: the file that holds it.
    Module { file: usize, module: Vec<String> },
    /// An item; `found` is false when the file neither defines nor imports the name (an
    /// inline module's item, a macro's): the file is still the best answer.
    Item {
        file: usize,
        name: String,
        found: bool,
    },
}

struct Crate {
    files: Vec<File>,
    modules: BTreeMap<Vec<String>, usize>,
    /// Files only compiled for tests.
    test_files: BTreeSet<usize>,
}

impl Crate {
    /// The library crate rooted at `src/lib.rs` (binaries under `src/main.rs` and `src/bin/`
    /// are other crates and are left out).
    fn parse(sources: Vec<(String, String)>) -> Crate {
        let mut files = Vec::new();
        let mut modules = BTreeMap::new();
        for (path, text) in sources {
            let Some(inner) = path
                .strip_prefix("src/")
                .and_then(|p| p.strip_suffix(".rs"))
            else {
                continue;
            };
            if inner == "main" || inner.starts_with("bin/") {
                continue;
            }
            let mut module: Vec<String> = inner.split('/').map(str::to_owned).collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            modules.insert(module.clone(), files.len());
            files.push(File::parse(path, module, &text));
        }
        let mut test_files = BTreeSet::new();
        for file in &files {
            for child in &file.test_children {
                let mut module = file.module.clone();
                module.push(child.clone());
                // The child and everything under it.
                for (m, &f) in &modules {
                    if m.starts_with(&module) {
                        test_files.insert(f);
                    }
                }
            }
        }
        Crate {
            files,
            modules,
            test_files,
        }
    }

    /// `path` as written in `file`, made absolute from the crate root; `None` when it leaves
    /// the crate (another crate, a local name).
    fn absolute(&self, file: usize, path: &[String]) -> Option<Vec<String>> {
        let here = &self.files[file].module;
        let first = path.first()?;
        let mut absolute = match first.as_str() {
            "crate" => Vec::new(),
            "self" => here.clone(),
            "super" => {
                let mut module = here.clone();
                let supers = path.iter().take_while(|s| *s == "super").count();
                for _ in 0..supers {
                    module.pop()?;
                }
                module.extend(path[supers..].iter().cloned());
                return Some(module);
            }
            child => {
                let mut module = here.clone();
                module.push(child.to_owned());
                if !self.modules.contains_key(&module) {
                    return None;
                }
                here.clone()
            }
        };
        let skip = usize::from(matches!(first.as_str(), "crate" | "self"));
        absolute.extend(path[skip..].iter().cloned());
        Some(absolute)
    }

    /// The file defining what the absolute `path` names, following imports and re-exports.
    fn resolve(&self, path: &[String], depth: usize) -> Option<Target> {
        if depth > 24 {
            return None;
        }
        let k = (0..=path.len())
            .rev()
            .find(|&k| self.modules.contains_key(&path[..k]))?;
        let file = self.modules[&path[..k]];
        if k == path.len() {
            return Some(Target::Module {
                file,
                module: path.to_vec(),
            });
        }
        let item = &path[k];
        let rest = &path[k + 1..];
        let follow = |target: Vec<String>| {
            let mut full = target;
            full.extend(rest.iter().cloned());
            self.resolve(&full, depth + 1)
        };
        let source = &self.files[file];
        if let Some(import) = source.uses.iter().find(|u| u.name.as_ref() == Some(item)) {
            return self.absolute(file, &import.path).and_then(follow);
        }
        if source.defines.contains(item) {
            return Some(Target::Item {
                file,
                name: item.clone(),
                found: true,
            });
        }
        for glob in source.uses.iter().filter(|u| u.name.is_none()) {
            let Some(mut target) = self.absolute(file, &glob.path) else {
                continue;
            };
            target.push(item.clone());
            let found = follow(target);
            if let Some(Target::Item { found: true, .. } | Target::Module { .. }) = found {
                return found;
            }
        }
        Some(Target::Item {
            file,
            name: item.clone(),
            found: false,
        })
    }

    /// Every file-to-file import outside test code, with the names that make it.
    fn edges(&self) -> BTreeMap<(usize, usize), BTreeSet<String>> {
        let mut edges: BTreeMap<(usize, usize), BTreeSet<String>> = BTreeMap::new();
        for (from, file) in self.files.iter().enumerate() {
            if self.test_files.contains(&from) {
                continue;
            }
            let add =
                |target: Option<Target>, edges: &mut BTreeMap<(usize, usize), BTreeSet<String>>| {
                    if let Some(Target::Item { file: to, name, .. }) = target
                        && to != from
                    {
                        edges.entry((from, to)).or_default().insert(name);
                    }
                };
            // Modules imported by name (`use super::replicas;`) are namespaces: the edge is
            // made by what is used through them.
            let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for import in &file.uses {
                if !matches!(
                    import.path.first().map(String::as_str),
                    Some("crate" | "super" | "self")
                ) {
                    continue;
                }
                let Some(absolute) = self.absolute(from, &import.path) else {
                    continue;
                };
                let target = self.resolve(&absolute, 0);
                match (&target, &import.name) {
                    (Some(Target::Module { module, .. }), Some(name)) => {
                        aliases.insert(name.clone(), module.clone());
                    }
                    (Some(Target::Module { file: to, .. }), None) if *to != from => {
                        edges.entry((from, *to)).or_default().insert("*".into());
                    }
                    _ => add(target, &mut edges),
                }
            }
            for inline in &file.inline {
                let absolute = match inline.path[0].as_str() {
                    "crate" | "super" | "self" => self.absolute(from, &inline.path),
                    alias => aliases.get(alias).map(|module| {
                        let mut full = module.clone();
                        full.extend(inline.path[1..].iter().cloned());
                        full
                    }),
                };
                if let Some(absolute) = absolute {
                    add(self.resolve(&absolute, 0), &mut edges);
                }
            }
        }
        edges
    }

    /// Each circle of files (a strongly connected component of more than one file), with
    /// the imports that tie it.
    fn circles(&self) -> Vec<String> {
        let edges = self.edges();
        let mut next: Vec<Vec<usize>> = vec![Vec::new(); self.files.len()];
        for &(from, to) in edges.keys() {
            next[from].push(to);
        }
        let mut report = Vec::new();
        for component in tarjan(&next) {
            if component.len() < 2 {
                continue;
            }
            let members: BTreeSet<usize> = component.iter().copied().collect();
            let mut names: Vec<&str> = members
                .iter()
                .map(|&f| self.files[f].path.as_str())
                .collect();
            names.sort_unstable();
            let mut text = format!("circle of {} files: {}\n", names.len(), names.join(", "));
            for ((from, to), tied) in &edges {
                if members.contains(from) && members.contains(to) {
                    let tied: Vec<&str> = tied.iter().map(String::as_str).collect();
                    text.push_str(&format!(
                        "  {} -> {}: {}\n",
                        self.files[*from].path,
                        self.files[*to].path,
                        tied.join(", ")
                    ));
                }
            }
            report.push(text);
        }
        report.sort();
        report
    }

    /// `file:line: what` for every client, runtime or clock use in the pure modules.
    fn impurities(&self, pure: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for (index, file) in self.files.iter().enumerate() {
            let is_pure = pure.iter().any(|p| {
                if p.ends_with('/') {
                    file.path.starts_with(p)
                } else {
                    file.path == *p
                }
            });
            if !is_pure || self.test_files.contains(&index) {
                continue;
            }
            let t = |i: usize| file.tokens.get(i).map_or("", |t| t.text.as_str());
            let mut report = |line: usize, what: &str| {
                found.push(format!("{}:{line}: {what}", file.path));
            };
            for (i, token) in file.tokens.iter().enumerate() {
                let word = token.text.as_str();
                let prev = if i >= 2 && t(i - 1) == "::" {
                    t(i - 2)
                } else {
                    ""
                };
                let next = if t(i + 1) == "::" { t(i + 2) } else { "" };
                match word {
                    "kube" => report(token.line, "`kube` (the Kubernetes API client)"),
                    "tokio" => report(token.line, "`tokio` (the async runtime: I/O, timers)"),
                    "chrono" => report(token.line, "`chrono` (clock and calendar)"),
                    "SystemTime" => report(token.line, "`SystemTime` (the wall clock)"),
                    "Instant" if prev == "time" => {
                        report(token.line, "`std::time::Instant` (the monotonic clock)")
                    }
                    "Instant" if next == "now" => {
                        report(token.line, "`Instant::now` (the monotonic clock)")
                    }
                    "Timestamp" | "Utc" if next == "now" => {
                        report(token.line, &format!("`{word}::now` (the wall clock)"))
                    }
                    _ => {}
                }
            }
            for import in &file.uses {
                let path: Vec<&str> = import.path.iter().map(String::as_str).collect();
                if path.starts_with(&["std", "time", "Instant"]) {
                    report(import.line, "`std::time::Instant` (the monotonic clock)");
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

/// Tarjan's strongly connected components of the graph `next` (node → successors).
fn tarjan(next: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        next: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        components: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.next[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(index) if s.on_stack[w] => s.low[v] = s.low[v].min(index),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let n = next.len();
    let mut state = State {
        next,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.components
}

// ---------------------------------------------------------------------------------------------
// The checker checked, on small made-up crates

fn made_up(files: &[(&str, &str)]) -> Crate {
    Crate::parse(
        files
            .iter()
            .map(|(path, text)| (path.to_string(), text.to_string()))
            .collect(),
    )
}

#[test]
fn a_circle_through_a_re_export_is_found_and_named() {
    let crate_ = made_up(&[
        ("src/lib.rs", "pub mod a;"),
        (
            "src/a/mod.rs",
            "mod x;\nmod y;\npub use x::{Thing as Renamed, self as ex};\n",
        ),
        (
            "src/a/x.rs",
            "pub struct Thing;\nfn f() { crate::a::y::helper(); }",
        ),
        ("src/a/y.rs", "use super::Renamed;\npub fn helper() {}"),
    ]);
    let circles = crate_.circles();
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(
        circles[0].contains("src/a/x.rs -> src/a/y.rs: helper"),
        "{circles:?}"
    );
    assert!(
        circles[0].contains("src/a/y.rs -> src/a/x.rs: Thing"),
        "{circles:?}"
    );
}

#[test]
fn globs_module_aliases_and_groups_are_followed() {
    let crate_ = made_up(&[
        ("src/lib.rs", "pub mod a;\npub mod b;"),
        ("src/a/mod.rs", "mod names;\npub use names::*;"),
        (
            "src/a/names.rs",
            "pub const LABEL: &str = \"x\";\npub fn f() { crate::b::g() }",
        ),
        (
            "src/b.rs",
            "use crate::{a::{self}};\npub fn g() { let _ = a::LABEL; }",
        ),
    ]);
    let circles = crate_.circles();
    assert_eq!(circles.len(), 1, "{circles:?}");
    assert!(
        circles[0].contains("src/b.rs -> src/a/names.rs: LABEL"),
        "{circles:?}"
    );
}

#[test]
fn test_code_comments_strings_and_mod_declarations_make_no_edge() {
    let crate_ = made_up(&[
        ("src/lib.rs", "pub mod a;\npub mod b;"),
        (
            "src/a.rs",
            "// crate::b::g\n/* crate::b::g */\nconst S: &str = \"crate::b::g\";\n\
             const R: &str = r#\"crate::b::g\"#;\nfn f<'a>(x: &'a str) -> char { 'x' }\n\
             pub fn used() {}\n#[cfg(test)]\nmod tests {\n    use crate::b::g;\n}\n",
        ),
        (
            "src/b.rs",
            "#[cfg(test)]\nmod fixtures;\npub fn g() { crate::a::used() }",
        ),
        ("src/b/fixtures.rs", "use crate::b::g;\nuse tokio::sync;"),
    ]);
    assert_eq!(crate_.circles(), Vec::<String>::new());
    assert_eq!(crate_.edges().len(), 1);
}

#[test]
fn clients_runtimes_and_clocks_in_pure_modules_are_named_by_line() {
    let crate_ = made_up(&[
        ("src/lib.rs", "pub mod plan;\npub mod agent;"),
        (
            "src/plan/mod.rs",
            "use std::time::{Duration, Instant};\nuse tokio::sync::watch;\n\
             fn f() { let _ = k8s_openapi::jiff::Timestamp::now(); }\n\
             // kube is mentioned only here\n#[cfg(test)]\nmod tests { use kube::Api; }\n",
        ),
        ("src/agent.rs", "use kube::Api;"),
    ]);
    assert_eq!(
        crate_.impurities(&["src/plan/"]),
        [
            "src/plan/mod.rs:1: `std::time::Instant` (the monotonic clock)",
            "src/plan/mod.rs:2: `tokio` (the async runtime: I/O, timers)",
            "src/plan/mod.rs:3: `Timestamp::now` (the wall clock)",
        ]
    );
}
