//! Exit codes, a stable contract (README "Exit codes"): 0 success, 1 runtime failure,
//! 2 usage or parameter error (clap's own usage errors also exit 2, as upstream's picocli).

pub const SUCCESS: i32 = 0;
pub const FAILURE: i32 = 1;
pub const USAGE: i32 = 2;

/// A parameter problem the user must fix (exit 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an error: usage errors anywhere in the chain give 2.
pub fn code_for(error: &anyhow::Error) -> i32 {
    if error.chain().any(|e| e.is::<UsageError>()) {
        USAGE
    } else {
        FAILURE
    }
}

/// One line for an error chain. Library errors carry their cause in their own message, and
/// anyhow's `{:#}` would print it again: causes already in the text are skipped.
pub fn render(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !text.contains(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let inner = anyhow::Error::new(io).context("cannot read x: No such file");
        let outer = inner.context("Incorrect starting hashes");
        assert_eq!(
            render(&outer),
            "Incorrect starting hashes: cannot read x: No such file"
        );
    }
}
