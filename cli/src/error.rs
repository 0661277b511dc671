//! The CLI's errors and the exit codes scripts rely on.

/// Every way a `kv` command can fail; each maps to one exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 1: the key does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Exit 1: a precondition (`--if-version`, `--if-absent`) did not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Exit 2: the command line or the input is malformed.
    #[error("{0}")]
    Usage(String),
    /// Exit 3: the server (or proxy) cannot be reached.
    #[error("{0}")]
    Unreachable(String),
    /// Exit 3: the server answered with an error of its own.
    #[error("{0}")]
    Server(String),
    /// Exit 4: the server refused our credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Exit 3: a local I/O failure (reading a file, writing stdout).
    #[error("{0}")]
    Io(String),
    /// Exit 0, quietly: whoever read our stdout has stopped (`kv dump | head`),
    /// which is how such a pipeline ends, not a failure of ours.
    #[error("the output was closed by its reader")]
    OutputClosed,
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound(_) | Self::PreconditionFailed(_) => 1,
            Self::Usage(_) => 2,
            Self::Unreachable(_) | Self::Server(_) | Self::Io(_) => 3,
            Self::Unauthorized(_) => 4,
            Self::OutputClosed => 0,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Self::OutputClosed
        } else {
            Self::Io(err.to_string())
        }
    }
}

impl From<kv_edge::serve::BindError> for CliError {
    fn from(err: kv_edge::serve::BindError) -> Self {
        Self::Usage(err.to_string())
    }
}
