//! Running this test binary as another user (uid 65534), wherever the build lies.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A copy of this test binary that user `NOBODY` can run: the build directory may lie below
/// one that only its owner can enter (a clone in a `mktemp -d` directory, say). The copy
/// sits in a fresh world-readable directory, removed on drop.
pub struct ExeForNobody(pub PathBuf);

impl ExeForNobody {
    pub fn new() -> ExeForNobody {
        use std::os::unix::fs::PermissionsExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shmbus-test-exe-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("test");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        ExeForNobody(exe)
    }
}

impl Drop for ExeForNobody {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
