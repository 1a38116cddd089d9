//! Credential values, read at call time from where `credentialSources` says. Errors name the credential,
//! never its value.

use crate::protocol::CredentialSource;
use crate::spec::ToolSpec;

/// The value of `credentials[index]`; a file's trailing newline (a common accident in Secrets) is dropped.
pub fn value(spec: &ToolSpec, index: usize) -> Result<String, String> {
    match spec.credential_sources.get(index) {
        Some(CredentialSource::Env(name)) => std::env::var(name)
            .map_err(|_| format!("credentials[{index}]: environment variable {name} is not set in the worker")),
        Some(CredentialSource::Path(path)) => std::fs::read_to_string(path)
            .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("credentials[{index}]: cannot read {path}: {}", e.kind())),
        None => Err(format!("credentials[{index}] has no credentialSources entry")),
    }
}
