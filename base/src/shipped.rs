//! Files the repository ships (the demo package, the evaluation classifier) as defaults of the
//! command-line tools.

use std::path::{Path, PathBuf};

/// The shipped file or folder `relative` (to the repository's root): where the build's checkout
/// had it (`built`, a compile-time path), else `relative` under the current directory. cargo
/// reuses a binary built in another checkout sharing the target directory (a CI clone) when the
/// sources did not change, and that checkout may be gone; the tools run from the repository's
/// root find the files there. Neither existing, `built` (for the error to name).
pub fn shipped(built: &str, relative: &str) -> PathBuf {
    let built = Path::new(built);
    if built.exists() || !Path::new(relative).exists() { built.to_path_buf() } else { PathBuf::from(relative) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_path_first_then_the_current_directory() {
        let dir = tempfile::tempdir().unwrap();
        let here = dir.path().join("here");
        std::fs::create_dir(&here).unwrap();
        let gone = dir.path().join("gone");
        let (here, gone) = (here.to_str().unwrap(), gone.to_str().unwrap());
        // Built where it still is: that path, whatever the current directory holds.
        assert_eq!(shipped(here, "Cargo.toml"), PathBuf::from(here));
        // Built in a checkout that is gone: the relative path, when it exists here (the crate's
        // directory, where cargo runs the tests).
        assert_eq!(shipped(gone, "Cargo.toml"), PathBuf::from("Cargo.toml"));
        // Neither: the build path, for the error to name.
        assert_eq!(shipped(gone, "no/such/file"), PathBuf::from(gone));
    }
}
