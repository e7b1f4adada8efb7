//! Errors as one line for the command lines: an error and its causes, each cause appended only
//! where the text so far does not already carry it (library errors name their cause in their
//! message and also expose it as their source, for callers that walk the chain).

/// The messages of an error chain (outermost first) as one line.
pub fn describe<'a, E: std::error::Error + ?Sized + 'a>(chain: impl IntoIterator<Item = &'a E>) -> String {
    let mut line = String::new();
    for e in chain {
        let text = e.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(String, std::io::Error);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    fn chain<'a>(e: &'a (dyn std::error::Error + 'static)) -> Vec<&'a (dyn std::error::Error + 'static)> {
        std::iter::successors(Some(e), |e| e.source()).collect()
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let said = Wrap("cannot read a.npz: no such file".into(), io());
        assert_eq!(describe(chain(&said)), "cannot read a.npz: no such file");
        let unsaid = Wrap("cannot read a.npz".into(), io());
        assert_eq!(describe(chain(&unsaid)), "cannot read a.npz: no such file");
    }
}
