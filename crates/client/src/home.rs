//! The home directory: one vault file holding the whole client state, the files
//! sealed beside it, and a lock file so two commands never write it at once.
//!
//! Writes are atomic: the new vault goes to a temporary file that is synced
//! and then renamed over the old one, so a crash leaves either the old state
//! or the new one, never a mix.
//!
//! Every blob is bound to its place (`vault::Place`: the state, the witness, or a file
//! and its name), so none can be swapped for another, and carries the state's
//! *generation*, which counts the saves. After each save a small sealed *witness*
//! records the generation saved; opening a state older than its witness (the state
//! file rolled back alone) is refused, as is a file beside it written after the state
//! it is read with. Rolling back the whole home (state, witness and files together)
//! is not detectable, and the threat model says so.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use backchannel_core::vault::{KdfParams, Place, VaultError, VaultKey};
use rand_core::OsRng;
use sha2::{Digest, Sha256};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::session::Blobs;
use crate::state::State;
use crate::{ClientError, Damage};

const VAULT: &str = "state.bcv";
const LOCK: &str = "lock";
/// The witness of the generation last saved.
const WITNESS: &str = "generation.bcv";
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
    /// The generation of the state on disk (the next save writes one more).
    generation: Arc<AtomicU64>,
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

    /// Creates a new home with `state` (the encoded state), its key derived with `kdf`
    /// ([`KdfParams::default`] but in tests).
    pub fn create(dir: &Path, passphrase: &[u8], state: &[u8], kdf: KdfParams) -> Result<Self, ClientError> {
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
        let key = VaultKey::create(passphrase, kdf, &mut OsRng).map_err(|e| ClientError::Corrupt(Damage::Vault(e)))?;
        let mut home = Self {
            dir: dir.to_path_buf(),
            key: Arc::new(key),
            generation: Arc::new(AtomicU64::new(0)),
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
        let opened = key.open(&blob, Place::STATE).map_err(vault_error)?;
        let upgrade = opened.format == 1;
        if !upgrade {
            check_witness(dir, &key, opened.generation)?;
        }
        let state = State::decode(&opened.plain)?;
        let mut home = Self {
            dir: dir.to_path_buf(),
            key: Arc::new(key),
            generation: Arc::new(AtomicU64::new(opened.generation)),
            written: Some(Sha256::digest(&opened.plain[..]).into()),
            _lock: lock,
        };
        if upgrade {
            // A home of an earlier release (vault format 1): its files are sealed again,
            // each bound to its place, then the state. A crash on the way leaves the state
            // in format 1, and the next open finishes.
            home.blobs().reseal_format_1()?;
            home.written = None;
            home.save(&opened.plain)?;
        }
        Ok((home, state))
    }

    /// Whether the home in `dir` was made with the cheap test setting of the key
    /// derivation (read from the vault's header, before any passphrase is asked for).
    pub fn test_only_kdf(dir: &Path) -> bool {
        fs::read(dir.join(VAULT)).is_ok_and(|blob| backchannel_core::vault::is_test_only(&blob))
    }

    /// Writes the encoded state durably and atomically, unless it is what was last written.
    pub fn save(&mut self, plain: &[u8]) -> Result<(), ClientError> {
        let digest: [u8; 32] = Sha256::digest(plain).into();
        if self.written == Some(digest) {
            return Ok(());
        }
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        let blob = self.key.seal(plain, Place::STATE, generation, &mut OsRng);
        replace(&self.dir, VAULT, &blob).map_err(|e| ClientError::io("writing the local store", e))?;
        self.generation.store(generation, Ordering::SeqCst);
        self.written = Some(digest);
        // The witness follows the state: a crash between the two leaves the state one
        // generation ahead of its witness, which opens.
        let witness = self.key.seal(&[], Place::WITNESS, generation, &mut OsRng);
        replace(&self.dir, WITNESS, &witness).map_err(|e| ClientError::io("writing the local store's witness", e))?;
        Ok(())
    }

    /// The sealed bulk data beside the vault (`files/`), under the vault's key.
    pub fn blobs(&self) -> SealedFiles {
        SealedFiles {
            dir: self.dir.join(FILES),
            key: Arc::clone(&self.key),
            generation: Arc::clone(&self.generation),
        }
    }
}

/// Bulk data sealed under the vault's key in the home's `files/` folder: the parts of
/// a file being received, a letter's attachment. Each write is durable (a crash
/// leaves the old file or the new one).
pub struct SealedFiles {
    dir: PathBuf,
    key: Arc<VaultKey>,
    /// The generation of the state on disk, shared with the [`Home`].
    generation: Arc<AtomicU64>,
}

impl SealedFiles {
    /// Seals again, bound to its place, every file that an earlier release sealed
    /// (vault format 1), each replaced atomically.
    fn reseal_format_1(&self) -> Result<(), ClientError> {
        let generation = self.generation.load(Ordering::SeqCst) + 1;
        for folder in self.folders() {
            for name in self.names(&folder) {
                if name.ends_with(".tmp") {
                    continue;
                }
                let path = format!("{folder}/{name}");
                let place = Place::file(&path);
                let Ok(blob) = fs::read(self.dir.join(&folder).join(&name)) else {
                    continue;
                };
                // What does not open is left as it is: reading it reports the damage.
                let Ok(opened) = self.key.open(&blob, place) else {
                    continue;
                };
                if opened.format == 1 {
                    let sealed = self.key.seal(&opened.plain, place, generation, &mut OsRng);
                    replace(&self.dir.join(&folder), &name, &sealed)
                        .map_err(|e| ClientError::io("sealing a file beside the local store again", e))?;
                }
            }
        }
        Ok(())
    }
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
        let path = format!("{dir}/{name}");
        let place = Place::file(&path);
        // Written before the save that counts it: the generation that save will have.
        let blob = self
            .key
            .seal(plain, place, self.generation.load(Ordering::SeqCst) + 1, &mut OsRng);
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
        let path = format!("{dir}/{name}");
        let place = Place::file(&path);
        let opened = self
            .key
            .open(&blob, place)
            .map_err(|_| ClientError::Corrupt(Damage::SealedPart))?;
        if opened.format == 1 {
            // Every file was sealed again when the home was upgraded: one in format 1 was
            // put back since, and is bound to no place.
            return Err(ClientError::Corrupt(Damage::SealedPart));
        }
        if opened.generation > self.generation.load(Ordering::SeqCst) + 1 {
            return Err(ClientError::Corrupt(Damage::RolledBack));
        }
        Ok(opened.plain)
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

/// Writes `bytes` as `name` in `dir` durably and atomically (a synced temporary file
/// renamed over the old one), readable by its owner only.
fn replace(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = private_file(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir);
    Ok(())
}

/// Refuses a state older than the generation its witness recorded (the state file
/// rolled back alone). A missing witness is what a crash leaves only before the first
/// save completed.
fn check_witness(dir: &Path, key: &VaultKey, generation: u64) -> Result<(), ClientError> {
    let witnessed = match fs::read(dir.join(WITNESS)) {
        Ok(blob) => {
            key.open(&blob, Place::WITNESS)
                .map_err(|_| ClientError::Corrupt(Damage::RolledBack))?
                .generation
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if generation > 1 {
                return Err(ClientError::Corrupt(Damage::RolledBack));
            }
            return Ok(());
        }
        Err(e) => return Err(ClientError::io("reading the local store's witness", e)),
    };
    if witnessed > generation {
        return Err(ClientError::Corrupt(Damage::RolledBack));
    }
    Ok(())
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
