//! `xtsfs platform-key`: create, list and rotate platform keys.

use crate::config::PlatformKeyAction;
use crate::error::Error;
use crate::keys::mmk::PlatformKeyStore;
use crate::keys::KeyContext;

pub fn run(action: PlatformKeyAction, keys: &KeyContext) -> Result<(), Error> {
    let dir = &keys.platform_key_dir;
    match action {
        PlatformKeyAction::Create(id) => {
            let version = PlatformKeyStore::open_or_create(dir)?.create(&id)?;
            println!(
                "created platform key '{id}' version {version} in {}",
                dir.display()
            );
        }
        PlatformKeyAction::Rotate(id) => {
            let version = PlatformKeyStore::open(dir)?.rotate(&id)?;
            println!("platform key '{id}' is now at version {version}; volumes wrapped under older versions still open, rewrap them to use it");
        }
        PlatformKeyAction::List => {
            for key in PlatformKeyStore::open(dir)?.list()? {
                let versions: Vec<String> = key.versions.iter().map(u32::to_string).collect();
                println!(
                    "{}\tversions {}\tlatest {}",
                    key.id,
                    versions.join(","),
                    key.versions.last().copied().unwrap_or(0)
                );
            }
        }
    }
    Ok(())
}
