//! Secrets the command line asks for: from a file named on the command
//! line, or typed at the terminal with no echo. Part of the `dataward`
//! binary only.

use std::path::Path;

use gateway::control::Passphrase;
use gateway::BadInput;
use zeroize::Zeroizing;

const MAX_SECRET_FILE: u64 = 4096;

/// The secret in `file` (one trailing line break removed), or typed at the
/// terminal after `prompt`, twice when `confirm`.
pub fn secret(file: Option<&Path>, prompt: &str, confirm: bool) -> anyhow::Result<Passphrase> {
    if let Some(path) = file {
        let meta = std::fs::metadata(path)
            .map_err(|e| BadInput(format!("cannot read {}: {e}", path.display())))?;
        if meta.len() > MAX_SECRET_FILE {
            return Err(BadInput(format!(
                "{} is larger than {MAX_SECRET_FILE} bytes: that is not a passphrase or key file",
                path.display()
            ))
            .into());
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("cannot read {}: {e}", path.display())))?,
        );
        let trimmed = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        return Ok(Passphrase::new(trimmed.to_string()));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(BadInput(
            "there is no terminal to type the passphrase on: give it in a file with --passphrase-file (--new-passphrase-file for a new one, --recovery-key-file for the recovery key)".into(),
        )
        .into());
    }
    let first = Zeroizing::new(
        rpassword::prompt_password(prompt)
            .map_err(|e| BadInput(format!("reading the passphrase: {e}")))?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("Type it again: ")
                .map_err(|e| BadInput(format!("reading the passphrase: {e}")))?,
        );
        if *again != *first {
            return Err(BadInput("the two passphrases differ; nothing was changed".into()).into());
        }
    }
    Ok(Passphrase::new(first.to_string()))
}
