//! Messages carried by hand: `courier export` and `courier import`.

use std::io::Write as _;
use std::path::Path;

use super::Context;
use crate::args::{ExportArgs, ImportArgs};
use crate::error::CliError;

/// `courier export`: writes what waits for the channel's other members into a new file.
pub fn export(a: &ExportArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let channel = &a.channel;
    let (bundle, n) = cx.engine.courier_export(channel)?;
    let path = cx.cwd.join(&a.to);
    write_new_file(&path, &bundle)?;
    cx.out.line(format!(
        "wrote {}: {n} envelope(s) for the other members of {channel}, {} bytes; \
         they stay queued for the relay too, and each member sees each message once",
        path.display(),
        bundle.len()
    ));
    Ok(())
}

/// `courier import`: delivers a bundle's messages, and says what was new.
pub async fn import(a: &ImportArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let path = cx.cwd.join(&a.file);
    let bundle = read_bundle(&path)?;
    let report = cx.engine.courier_import(&bundle).await?;
    if report.again {
        cx.out
            .line("this bundle was imported here before; nothing in it is shown twice");
    }
    if report.for_us == 0 {
        cx.out
            .line("the bundle holds nothing for you (it was made for other members)");
    }
    for (channel, n) in &report.new {
        cx.out
            .line(format!("{n} new in {channel}; `backchannel read {channel}` shows them"));
    }
    if report.for_us > 0 && report.new.is_empty() && !report.again {
        cx.out.line("nothing new: every message in it had already arrived");
    }
    Ok(())
}

/// Writes a file that must not exist yet, readable only by its owner, durably.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let cannot = |source| CliError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::FileExists(path.to_path_buf())
        } else {
            cannot(e)
        }
    })?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(cannot)
}

/// Reads a courier bundle, refusing one larger than any bundle can be.
fn read_bundle(path: &Path) -> Result<Vec<u8>, CliError> {
    let cannot = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > backchannel_client::core_types::MAX_BUNDLE_SIZE as u64 {
        return Err(CliError::NotABundle(path.to_path_buf()));
    }
    std::fs::read(path).map_err(cannot)
}
