//! `cargo xtask tidy`: conventions every `.rs` file in the workspace follows.
//!
//! The rules, checked on every `.rs` file outside `target/` and hidden directories:
//!
//! 1. The first non-empty line is a `//!` doc comment. Every module says what it
//!    is for before anything else; crate attributes such as `#![forbid(...)]`
//!    go after the doc.
//! 2. No `todo!(`, `unimplemented!(` or `dbg!(` anywhere. This file, which has
//!    to spell the patterns out, is the one exception.
//! 3. No tab characters.
//!
//! The checks are pure functions from file text to [`Problem`]s, unit tested
//! below with small strings. The walk over the workspace also runs as the test
//! `tidy::tests::workspace_is_tidy`, so plain `cargo test` enforces the rules.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Macros that must not be left in the code.
const BANNED_MACROS: [&str; 3] = ["todo!(", "unimplemented!(", "dbg!("];

/// The file that defines [`BANNED_MACROS`] (and tests them), relative to the
/// workspace root; the banned-macro rule skips it.
const DEFINING_FILE: &str = "xtask/src/tidy.rs";

/// One rule broken on one line of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong, for a human.
    pub message: String,
}

impl Problem {
    fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

/// A [`Problem`] in a named file: printed as `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Path relative to the workspace root, with `/` separators.
    pub path: String,
    /// The rule broken.
    pub problem: Problem,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}",
            self.path, self.problem.line, self.problem.message
        )
    }
}

/// Runs `cargo xtask tidy`: prints every finding and fails if there is any.
pub fn run(root: &Path) -> ExitCode {
    match check_and_report(root) {
        Ok(()) => {
            println!("tidy: ok");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the workspace at `root`, printing each finding to stderr.
/// `Err` carries a one-line summary of what failed.
pub fn check_and_report(root: &Path) -> Result<(), String> {
    let findings = check_workspace(root)
        .map_err(|err| format!("tidy could not read {}: {err}", root.display()))?;
    for finding in &findings {
        eprintln!("{finding}");
    }
    match findings.len() {
        0 => Ok(()),
        count => Err(format!("tidy found {count} problem(s), listed above")),
    }
}

/// Checks every `.rs` file under `root` (see [`rust_files`]).
pub fn check_workspace(root: &Path) -> io::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    for file in rust_files(root)? {
        let path = relative_path(root, &file);
        let problems = match fs::read_to_string(&file) {
            Ok(text) => check_file(&path, &text),
            Err(err) => vec![Problem::new(1, format!("cannot read as UTF-8 text: {err}"))],
        };
        findings.extend(problems.into_iter().map(|problem| Finding {
            path: path.clone(),
            problem,
        }));
    }
    Ok(findings)
}

/// Every `.rs` file under `root`, sorted, skipping directories named `target`
/// and directories whose name starts with `.`. Symbolic links are not followed.
pub fn rust_files(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    dirs.push(entry.path());
                }
            } else if file_type.is_file() && name.ends_with(".rs") {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `file` relative to `root`, with `/` separators whatever the platform.
fn relative_path(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap_or(file);
    relative
        .components()
        .map(|component| component.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every rule applied to one file; `path` is relative to the workspace root
/// and only decides whether the banned-macro rule applies.
pub fn check_file(path: &str, text: &str) -> Vec<Problem> {
    let mut problems: Vec<Problem> = module_doc(text).into_iter().collect();
    if path != DEFINING_FILE {
        problems.extend(banned_macros(text));
    }
    problems.extend(tabs(text));
    problems.sort_by_key(|problem| problem.line);
    problems
}

/// Rule 1: the first non-empty line must be a `//!` doc comment.
pub fn module_doc(text: &str) -> Option<Problem> {
    match text
        .lines()
        .enumerate()
        .find(|(_, line)| !line.trim().is_empty())
    {
        None => Some(Problem::new(
            1,
            "empty file: expected a `//!` doc comment saying what the module is for",
        )),
        Some((_, line)) if line.trim_start().starts_with("//!") => None,
        Some((index, _)) => Some(Problem::new(
            index + 1,
            "the first non-empty line must be a `//!` doc comment \
             (crate attributes go after it)",
        )),
    }
}

/// Rule 2: no `todo!(`, `unimplemented!(` or `dbg!(` (as whole macro names,
/// so `my_todo!(` is fine). One problem per macro per line.
pub fn banned_macros(text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        for pattern in BANNED_MACROS {
            if contains_macro_call(line, pattern) {
                problems.push(Problem::new(
                    index + 1,
                    format!("`{pattern}..)` must not be left in the code"),
                ));
            }
        }
    }
    problems
}

/// Whether `line` contains `pattern` not preceded by an identifier character.
fn contains_macro_call(line: &str, pattern: &str) -> bool {
    line.match_indices(pattern).any(|(start, _)| {
        !line[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Rule 3: no tab characters. One problem per line.
pub fn tabs(text: &str) -> Vec<Problem> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains('\t'))
        .map(|(index, _)| Problem::new(index + 1, "tab character: indent with spaces"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(problems: &[Problem]) -> Vec<usize> {
        problems.iter().map(|problem| problem.line).collect()
    }

    #[test]
    fn module_doc_first_is_accepted() {
        assert_eq!(module_doc("//! Does things.\nfn f() {}\n"), None);
    }

    #[test]
    fn module_doc_after_blank_lines_is_accepted() {
        assert_eq!(module_doc("\n   \n//! Does things.\n"), None);
        assert_eq!(module_doc("  //! Indented is fine.\n"), None);
    }

    #[test]
    fn module_doc_then_attribute_is_accepted() {
        assert_eq!(
            module_doc("//! Crate doc.\n\n#![forbid(unsafe_code)]\n"),
            None
        );
    }

    #[test]
    fn attribute_before_module_doc_is_rejected() {
        let problem = module_doc("#![forbid(unsafe_code)]\n//! Crate doc.\n");
        assert_eq!(problem.map(|p| p.line), Some(1));
    }

    #[test]
    fn missing_module_doc_reports_first_non_empty_line() {
        let problem = module_doc("\n\nuse std::fmt;\n");
        assert_eq!(problem.map(|p| p.line), Some(3));
    }

    #[test]
    fn outer_doc_or_plain_comment_is_not_a_module_doc() {
        assert!(module_doc("/// Item doc.\nfn f() {}\n").is_some());
        assert!(module_doc("// plain comment\n").is_some());
    }

    #[test]
    fn empty_file_is_rejected() {
        assert_eq!(module_doc("").map(|p| p.line), Some(1));
        assert_eq!(module_doc("\n \n").map(|p| p.line), Some(1));
    }

    #[test]
    fn banned_macros_are_found_with_line_numbers() {
        let text =
            "//! Doc.\nfn a() { todo!() }\nfn b() { unimplemented!(\"x\") }\nfn c() { dbg!(1); }\n";
        assert_eq!(lines(&banned_macros(text)), vec![2, 3, 4]);
    }

    #[test]
    fn banned_macros_in_paths_and_comments_are_found() {
        assert_eq!(lines(&banned_macros("std::todo!()")), vec![1]);
        assert_eq!(lines(&banned_macros("// dbg!(x) for later")), vec![1]);
    }

    #[test]
    fn similar_names_are_not_banned() {
        assert!(banned_macros("my_todo!(); xdbg!(1); todo_list(); dbg(1);").is_empty());
    }

    #[test]
    fn two_banned_macros_on_one_line_are_both_reported() {
        assert_eq!(lines(&banned_macros("dbg!(todo!())")), vec![1, 1]);
    }

    #[test]
    fn tabs_are_found() {
        assert_eq!(
            lines(&tabs("//! Doc.\nfn f() {\n\tlet x = 1;\n}\n")),
            vec![3]
        );
        assert!(tabs("//! Doc.\n    let x = 1;\n").is_empty());
    }

    #[test]
    fn check_file_combines_rules_in_line_order() {
        let text = "fn f() {\n\tdbg!(1);\n}\n";
        let problems = check_file("core/src/x.rs", text);
        assert_eq!(lines(&problems), vec![1, 2, 2]);
    }

    #[test]
    fn defining_file_may_spell_banned_macros() {
        let text = "//! Doc.\nconst P: &str = \"todo!(\";\n";
        assert!(check_file(DEFINING_FILE, text).is_empty());
        assert_eq!(lines(&check_file("xtask/src/main.rs", text)), vec![2]);
    }

    #[test]
    fn crlf_line_endings_are_handled() {
        assert_eq!(module_doc("\r\n//! Doc.\r\nfn f() {}\r\n"), None);
    }

    #[test]
    fn finding_displays_as_path_line_message() {
        let finding = Finding {
            path: "core/src/lib.rs".into(),
            problem: Problem::new(7, "bad"),
        };
        assert_eq!(finding.to_string(), "core/src/lib.rs:7: bad");
    }

    #[test]
    fn walk_finds_workspace_files_and_skips_target() {
        let root = crate::workspace_root();
        let files: Vec<String> = rust_files(&root)
            .expect("walk the workspace")
            .iter()
            .map(|file| relative_path(&root, file))
            .collect();
        assert!(files.iter().any(|f| f == DEFINING_FILE), "{files:?}");
        assert!(files.iter().any(|f| f == "xtask/src/main.rs"), "{files:?}");
        let excluded = |f: &String| {
            f.split('/')
                .any(|part| part == "target" || part.starts_with('.'))
        };
        assert!(!files.iter().any(excluded), "{files:?}");
    }

    #[test]
    fn workspace_is_tidy() {
        let findings = check_workspace(&crate::workspace_root()).expect("walk the workspace");
        let report: Vec<String> = findings.iter().map(ToString::to_string).collect();
        assert!(
            findings.is_empty(),
            "`cargo xtask tidy` found {} problem(s):\n{}",
            findings.len(),
            report.join("\n")
        );
    }
}
