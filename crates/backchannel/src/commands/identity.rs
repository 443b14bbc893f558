//! The home and its identity: where the home is, the passphrase that opens it,
//! `init`, and opening the engine for every other command.

use std::io::IsTerminal;
use std::path::PathBuf;

use backchannel_client::core_types::RelayAddress;
use backchannel_client::Engine;

use crate::args::{Global, InitArgs};
use crate::error::CliError;
use crate::output::Out;

/// The home directory: `--home`, `$BACKCHANNEL_HOME`, then the platform's data directory.
pub fn home(global: &Global) -> Result<PathBuf, CliError> {
    if let Some(h) = &global.home {
        return Ok(h.clone());
    }
    dirs::data_dir().map(|d| d.join("backchannel")).ok_or(CliError::NoHome)
}

/// The passphrase: from `--passphrase-file`, `$BACKCHANNEL_PASSPHRASE`, or a prompt
/// (typed twice when `confirm`, at `init`). An empty one is refused whatever its source
/// when a home is made, and at the prompt always (a home made empty by an earlier release
/// still opens from the environment or a file).
fn passphrase(global: &Global, confirm: bool) -> Result<Vec<u8>, CliError> {
    let given = if let Some(f) = &global.passphrase_file {
        let s = std::fs::read_to_string(f).map_err(CliError::io("reading the passphrase file"))?;
        Some(s.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
    } else {
        std::env::var("BACKCHANNEL_PASSPHRASE").ok().map(String::into_bytes)
    };
    if let Some(p) = given {
        if confirm && p.is_empty() {
            return Err(CliError::EmptyPassphrase);
        }
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("passphrase: ").map_err(CliError::io("reading the passphrase"))?;
        if confirm {
            let again =
                rpassword::prompt_password("passphrase again: ").map_err(CliError::io("reading the passphrase"))?;
            if again != p {
                return Err(CliError::PassphrasesDiffer);
            }
        }
        if p.is_empty() {
            return Err(CliError::EmptyPassphrase);
        }
        return Ok(p.into_bytes());
    }
    Err(CliError::NoPassphrase)
}

/// Opens the home's engine (taking its lock), reaching relays through `--proxy` if given.
pub fn open(global: &Global) -> Result<Engine, CliError> {
    let dir = home(global)?;
    let pass = passphrase(global, false)?;
    let mut engine = Engine::open(&dir, &pass)?;
    if let Some(p) = &global.proxy {
        engine.set_proxy(p.clone());
    }
    Ok(engine)
}

/// `init`: creates the home's identity.
pub async fn init(global: &Global, args: &InitArgs, out: &Out) -> Result<(), CliError> {
    let relay = args
        .relay
        .iter()
        .map(|r| r.parse::<RelayAddress>())
        .collect::<Result<Vec<_>, _>>()?;
    let dir = home(global)?;
    let pass = passphrase(global, true)?;
    let fp = Engine::init(&dir, &pass, &args.name, relay, global.proxy.clone(), !args.no_forward).await?;
    out.line(format!("identity created for {}", args.name));
    out.line(format!("fingerprint: {fp}"));
    if let Some(p) = &global.proxy {
        out.line(format!("every connection will go through {p}"));
    }
    Ok(())
}
