//! The core must not do IO or read a clock (DESIGN.md, "Two layers"). This test reads every
//! file under `src/core/` and fails on the first forbidden name, so the rule cannot erode
//! quietly. Comment lines are skipped, so docs may still mention the names.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &[
    "tokio",
    "std::net",
    "std::fs",
    "std::env",
    "std::thread",
    "Instant::now",
    "SystemTime::now",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/core is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Names `line` uses that the core may not, ignoring comments.
fn violations(line: &str) -> Vec<&'static str> {
    let code = line.split("//").next().unwrap_or_default();
    FORBIDDEN
        .iter()
        .copied()
        .filter(|name| code.contains(name))
        .collect()
}

#[test]
fn core_uses_no_io_and_no_clock() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(files.len() >= 5, "found the core's files: {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            for name in violations(line) {
                found.push(format!(
                    "{}:{}: uses {name}: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "src/core must stay sans-IO:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_each_forbidden_name() {
    assert!(!FORBIDDEN.is_empty());
    for name in FORBIDDEN {
        assert_eq!(violations(&format!("use {name};")), vec![*name]);
        assert!(violations(&format!("// mentions {name} in a comment")).is_empty());
    }
    assert!(violations("let t = std::time::Instant::now();").contains(&"Instant::now"));
}
