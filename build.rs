//! Embeds the git revision the binary was built from, so every bench summary names the code
//! it measured. Outside a git checkout (a source tarball, a vendored crate) the revision is
//! "unknown"; this script never fails the build.

use std::path::Path;
use std::process::Command;

fn main() {
    let revision = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TROVE_GIT_REVISION={revision}");
    // Re-run when HEAD moves: HEAD itself (a checkout) and the branch it points at (a commit).
    // Only existing paths are named; a missing one would make cargo re-run this every build.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        watch(&Path::new(&git_dir).join("HEAD"));
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&Path::new(&git_dir).join(&reference));
            if let Some(common_dir) = git(&["rev-parse", "--git-common-dir"]) {
                watch(&Path::new(&common_dir).join(&reference));
                watch(&Path::new(&common_dir).join("packed-refs"));
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Runs git and returns its trimmed output, or None if git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
