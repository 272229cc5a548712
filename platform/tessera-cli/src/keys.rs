//! `tessera rotate-kek`: re-wrap every data key under a new key-encryption key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use tessera_store::{Kek, Store};

use crate::serve::StoreArgs;

#[derive(Debug, clap::Args)]
pub struct RotateKekArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A file holding the new key-encryption key (64 hex digits). Required
    /// when the key is configured (kek / TESSERA_KEK); for the embedded
    /// default a new key is generated into `<data_dir>/kek.key` instead.
    #[arg(long)]
    new_kek_file: Option<PathBuf>,
}

pub fn run(args: RotateKekArgs) -> Result<ExitCode> {
    crate::serve::init_tracing(false);
    let config = args.store.load()?;
    let old = config.kek().map_err(anyhow::Error::msg)?;
    // The embedded default keeps its key in a file: the new key goes to a
    // file beside it first, and replaces it once every data key is re-wrapped.
    let (new, staged) = match (&args.new_kek_file, config.kek_file()) {
        (Some(file), kept) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let new = Kek::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            (new, kept.map(|k| (k, text)))
        }
        (None, Some(kept)) => {
            let text = Kek::generate_text()?;
            (Kek::parse(&text)?, Some((kept, text)))
        }
        (None, None) => bail!(
            "the key-encryption key is configured (kek / TESSERA_KEK): give the new one with --new-kek-file, \
             then configure it in every process"
        ),
    };
    if new.fingerprint() == old.fingerprint() {
        bail!("the new key-encryption key is the current one (fingerprint {})", old.fingerprint());
    }
    let policy = crate::contracts::load_policy(config.policy.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    // The store opens only under the key its data keys are wrapped with:
    // nothing is written anywhere before that is known.
    let store = runtime.block_on(Store::open(&config.database_url(), policy, old))?;
    let next = staged.as_ref().map(|(kept, _)| kept.with_extension("key.next"));
    if let (Some(next), Some((_, text))) = (&next, &staged) {
        if next.exists() {
            runtime.block_on(store.close());
            bail!(
                "{} is left from an earlier rotation; it may hold the key the data keys are wrapped under: if `tessera serve` refuses \
                 the key in kek.key, move it over kek.key; otherwise delete it, then rotate again",
                next.display()
            );
        }
        tessera_server::config::write_secret(next, text).with_context(|| format!("cannot write {}", next.display()))?;
    }
    let rotated = runtime.block_on(async {
        let rotated = store.rotate_kek(&new).await;
        store.close().await;
        rotated
    });
    let rotated = rotated.with_context(|| match &next {
        Some(next) => {
            format!("the rotation failed; the new key stays in {} until it is known which key wraps the data keys", next.display())
        }
        None => "the rotation failed; the data keys stay wrapped under the current key".to_owned(),
    })?;
    if let (Some(next), Some((kept, _))) = (&next, &staged) {
        std::fs::rename(next, kept).with_context(|| {
            format!("the data keys are re-wrapped under the key in {}, but it could not replace {}", next.display(), kept.display())
        })?;
        if let Some(dir) = kept.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
        }
        println!(
            "re-wrapped {rotated} data keys under a new key-encryption key (fingerprint {}), kept in {}",
            new.fingerprint(),
            kept.display()
        );
    } else {
        println!(
            "re-wrapped {rotated} data keys under the key-encryption key with fingerprint {}: start every process with it (kek / TESSERA_KEK)",
            new.fingerprint()
        );
    }
    Ok(ExitCode::SUCCESS)
}
