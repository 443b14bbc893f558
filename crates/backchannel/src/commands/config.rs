//! `config get` and `config set`: the home's settings (`Engine::settings`). A value is
//! checked here as its flag would be (`--cover`'s rate, `--proxy`'s address) before the
//! engine keeps it.

use backchannel_client::ClientError;

use crate::args::parse_rate;
use crate::commands::Context;
use crate::error::CliError;

/// `config get [KEY]`.
pub fn get(key: Option<&str>, cx: &mut Context<'_>) -> Result<(), CliError> {
    let settings = cx.engine.settings();
    match key {
        None => {
            for (k, v) in settings {
                cx.out.line(format!("{k} = {v}"));
            }
        }
        Some(key) => {
            let value = settings
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .ok_or_else(|| unknown(key))?;
            cx.out.line(value);
        }
    }
    Ok(())
}

/// `config set KEY VALUE`.
pub fn set(key: &str, value: &str, cx: &mut Context<'_>) -> Result<(), CliError> {
    let value = value.trim();
    if key == backchannel_client::state::COVER_SETTING && value != "off" {
        parse_rate(value).map_err(|e| CliError::from(ClientError::Usage(format!("cover: {e}"))))?;
    }
    cx.engine.set_setting(key, value)?;
    let now = cx
        .engine
        .settings()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_default();
    cx.out.line(format!("{key} = {now}"));
    Ok(())
}

fn unknown(key: &str) -> CliError {
    CliError::from(ClientError::Usage(format!(
        "there is no setting called \"{key}\"; the settings are forward, proxy, cover and relays"
    )))
}
