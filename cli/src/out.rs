//! Standard output for the CLI's results. `println!` panics when the reader has gone
//! (`confide job watch JOB | head -3`); these macros return the write's error instead, and
//! [`is_closed_pipe`] tells `main` to end quietly with exit 0, as Unix tools do.

/// `print!` to standard output, returning `std::io::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `println!` to standard output, returning `std::io::Result<()>`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub(crate) use {out, outln};

/// Whether an error is (or was caused by) writing to a pipe whose reader has closed it.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
