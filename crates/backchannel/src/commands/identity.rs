//! The home and its identity: where the home is, the passphrase that opens it,
//! `init`, and opening the engine for every other command.

use std::io::IsTerminal;
use std::path::PathBuf;

use backchannel_client::core_types::{KdfParams, RelayAddress};
use backchannel_client::home::Home;
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

/// The environment variable that makes `init` derive the home's key with the cheapest
/// Argon2 parameters, for tests only: the setting is recorded in the vault's header, and
/// every command that opens such a home warns.
pub const TEST_KDF_VAR: &str = "BACKCHANNEL_INSECURE_TEST_KDF";

const TEST_KDF_WARNING: &str = "this home's passphrase is protected by a test-only key derivation (made with \
     BACKCHANNEL_INSECURE_TEST_KDF): anyone with a copy of it can guess the passphrase cheaply; never use it \
     for real";

/// Opens the home's engine (taking its lock), reaching relays through `--proxy` if given.
pub fn open(global: &Global) -> Result<Engine, CliError> {
    let dir = home(global)?;
    if Home::test_only_kdf(&dir) {
        eprintln!("warning: {TEST_KDF_WARNING}");
    }
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
    let kdf = if std::env::var_os(TEST_KDF_VAR).is_some_and(|v| v == "1") {
        eprintln!("warning: {TEST_KDF_WARNING}");
        KdfParams::test_only()
    } else {
        KdfParams::default()
    };
    let fp = Engine::init(
        &dir,
        &pass,
        &args.name,
        relay,
        global.proxy.clone(),
        !args.no_forward,
        kdf,
    )
    .await?;
    out.line(format!("identity created for {}", args.name));
    out.line(format!("fingerprint: {fp}"));
    if let Some(p) = &global.proxy {
        out.line(format!("every connection will go through {p}"));
    }
    Ok(())
}
