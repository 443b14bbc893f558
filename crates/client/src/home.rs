//! The home directory: one vault file holding the whole client state, and a
//! lock file so two commands never write it at once.
//!
//! Writes are atomic: the new vault goes to a temporary file that is synced
//! and then renamed over the old one, so a crash leaves either the old state
//! or the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use backchannel_core::vault::{KdfParams, VaultError, VaultKey};
use rand_core::OsRng;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use crate::session::Blobs;
use crate::state::State;
use crate::{ClientError, Damage};

const VAULT: &str = "state.bcv";
const LOCK: &str = "lock";
/// Folder for sealed bulk data (parts of files being received).
const FILES: &str = "files";

/// Where the driver saves the session's state (the home directory; memory in tests).
pub trait Vault: Send {
    /// Writes the encoded state durably and atomically.
    fn save(&mut self, state: &[u8]) -> Result<(), ClientError>;
}

impl Vault for Home {
    fn save(&mut self, state: &[u8]) -> Result<(), ClientError> {
        Home::save(self, state)
    }
}

/// An opened, locked home directory.
pub struct Home {
    dir: PathBuf,
    key: Arc<VaultKey>,
    /// SHA-256 of the state last written (or read): an unchanged state is not
    /// written again (the daemon syncs every second or faster).
    written: Option<[u8; 32]>,
    _lock: File,
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Home(..)")
    }
}

fn lock(dir: &Path) -> Result<File, ClientError> {
    let mut opts = OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts
        .open(dir.join(LOCK))
        .map_err(|e| ClientError::io("opening the home's lock file", e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(ClientError::Busy(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => return Err(ClientError::io("locking the home directory", e)),
    }
    Ok(f)
}

impl Home {
    /// Whether `dir` already holds an identity.
    pub fn exists(dir: &Path) -> bool {
        dir.join(VAULT).exists()
    }

    /// Creates a new home with `state` (the encoded state).
    pub fn create(dir: &Path, passphrase: &[u8], state: &[u8]) -> Result<Self, ClientError> {
        private_dir(dir).map_err(|e| ClientError::io("creating the home directory", e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        }
        let lock = lock(dir)?;
        if Self::exists(dir) {
            return Err(ClientError::AlreadyInitialized(dir.to_path_buf()));
        }
        let key = VaultKey::create(passphrase, KdfParams::default(), &mut OsRng)
            .map_err(|e| ClientError::Corrupt(Damage::Vault(e)))?;
        let mut home = Self {
            dir: dir.to_path_buf(),
            key: Arc::new(key),
            written: None,
            _lock: lock,
        };
        home.save(state)?;
        Ok(home)
    }

    /// Opens an existing home and decrypts its state.
    pub fn open(dir: &Path, passphrase: &[u8]) -> Result<(Self, State), ClientError> {
        if !Self::exists(dir) {
            return Err(ClientError::NotInitialized(dir.to_path_buf()));
        }
        let lock = lock(dir)?;
        let blob = fs::read(dir.join(VAULT)).map_err(|e| ClientError::io("reading the local store", e))?;
        let key = VaultKey::for_blob(passphrase, &blob).map_err(vault_error)?;
        let plain = key.open(&blob).map_err(vault_error)?;
        let state = State::decode(&plain)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                key: Arc::new(key),
                written: Some(Sha256::digest(&plain[..]).into()),
                _lock: lock,
            },
            state,
        ))
    }

    /// Writes the encoded state durably and atomically, unless it is what was last written.
    pub fn save(&mut self, plain: &[u8]) -> Result<(), ClientError> {
        let digest: [u8; 32] = Sha256::digest(plain).into();
        if self.written == Some(digest) {
            return Ok(());
        }
        let blob = self.key.seal(plain, &mut OsRng);
        let tmp = self.dir.join(format!("{VAULT}.tmp"));
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&tmp)
            .map_err(|e| ClientError::io("writing the local store", e))?;
        f.write_all(&blob)
            .map_err(|e| ClientError::io("writing the local store", e))?;
        f.sync_all()
            .map_err(|e| ClientError::io("syncing the local store", e))?;
        fs::rename(&tmp, self.dir.join(VAULT)).map_err(|e| ClientError::io("replacing the local store", e))?;
        sync_dir(&self.dir);
        self.written = Some(digest);
        Ok(())
    }

    /// The sealed bulk data beside the vault (`files/`), under the vault's key.
    pub fn blobs(&self) -> SealedFiles {
        SealedFiles {
            dir: self.dir.join(FILES),
            key: Arc::clone(&self.key),
        }
    }
}

/// Bulk data sealed under the vault's key in the home's `files/` folder: the parts of
/// a file being received, a letter's attachment. Each write is durable (a crash
/// leaves the old file or the new one).
pub struct SealedFiles {
    dir: PathBuf,
    key: Arc<VaultKey>,
}

impl Blobs for SealedFiles {
    fn write(&mut self, dir: &str, name: &str, plain: &[u8]) -> Result<(), ClientError> {
        let folder = self.dir.join(dir);
        if !folder.is_dir() {
            let made_files = !self.dir.is_dir();
            private_dir(&folder).map_err(|e| ClientError::io("creating a folder beside the local store", e))?;
            // The new folder's name is durable before a vault that points at it is saved.
            sync_dir(&self.dir);
            if made_files {
                if let Some(home) = self.dir.parent() {
                    sync_dir(home);
                }
            }
        }
        let blob = self.key.seal(plain, &mut OsRng);
        let tmp = folder.join(format!("{name}.tmp"));
        let mut f =
            private_file(&tmp).map_err(|e| ClientError::io("writing a sealed file beside the local store", e))?;
        f.write_all(&blob)
            .and_then(|()| f.sync_data())
            .map_err(|e| ClientError::io("writing a sealed file beside the local store", e))?;
        fs::rename(&tmp, folder.join(name))
            .map_err(|e| ClientError::io("writing a sealed file beside the local store", e))?;
        // The new name is durable before a vault that points at it is saved.
        sync_dir(&folder);
        Ok(())
    }

    fn read(&self, dir: &str, name: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
        let blob = fs::read(self.dir.join(dir).join(name))
            .map_err(|e| ClientError::io("reading a sealed file beside the local store", e))?;
        self.key
            .open(&blob)
            .map_err(|_| ClientError::Corrupt(Damage::SealedPart))
    }

    fn remove(&mut self, dir: &str) {
        let _ = fs::remove_dir_all(self.dir.join(dir));
    }

    fn delete(&mut self, dir: &str, name: &str) {
        let _ = fs::remove_file(self.dir.join(dir).join(name));
    }

    fn folders(&self) -> Vec<String> {
        entries(&self.dir, true)
    }

    fn names(&self, dir: &str) -> Vec<String> {
        entries(&self.dir.join(dir), false)
    }
}

/// The names of the folders (or the files) in `dir`.
fn entries(dir: &Path, folders: bool) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == folders))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Makes a folder's entries durable (best effort, as for the vault's own folder).
/// Creates `dir` and any missing parent, each one it makes readable by its owner only
/// (0700); an existing folder keeps its mode.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Creates (or empties) `path` for writing; a file it makes is readable by its owner
/// only (0600).
pub(crate) fn private_file(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn vault_error(e: VaultError) -> ClientError {
    match e {
        VaultError::Unauthentic => ClientError::WrongPassphrase,
        // The vault's own format (the digit after its magic), not the state's layout.
        VaultError::Newer(v) => ClientError::NewerStore {
            found: v.to_digit(10).unwrap_or(0),
            known: 1,
        },
        other => ClientError::Corrupt(Damage::Vault(other)),
    }
}
