//! Where the tables live: a root URL in object storage, and the layout
//! `<warehouse>/<domain>/<product>/v<major>/<table>` under it.

use std::path::Path;

use url::Url;

/// The root of every product's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    root: Url,
}

impl Warehouse {
    /// The warehouse at `location`: a URL (`s3://bucket/prefix`,
    /// `file:///abs/dir`) or a local directory, relative to `base`.
    pub fn parse(location: &str, base: &Path) -> Result<Self, String> {
        let location = location.trim();
        if location.is_empty() {
            return Err("the warehouse location is empty: give a directory or a URL such as s3://bucket/prefix".into());
        }
        let mut root = match Url::parse(location) {
            // A one-letter scheme is a Windows drive, not a URL.
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                let path = base.join(location);
                std::fs::create_dir_all(&path).map_err(|e| format!("cannot create the warehouse directory {}: {e}", path.display()))?;
                let path = path.canonicalize().map_err(|e| format!("warehouse directory {}: {e}", path.display()))?;
                Url::from_directory_path(&path).map_err(|()| format!("{} is not an absolute directory", path.display()))?
            }
        };
        match root.scheme() {
            "file" | "s3" | "s3a" | "memory" => {}
            other => {
                return Err(format!("warehouse URL scheme `{other}:` is not supported; use a directory, file:// or s3://"));
            }
        }
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// Whether the warehouse answers: its root can be listed (in object
    /// storage, with the configured credentials; a local directory exists).
    pub async fn reachable(&self) -> Result<(), String> {
        if self.root.scheme() == "file" {
            let path = self.root.to_file_path().map_err(|()| format!("{} is not a local path", self.root))?;
            return match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(format!("the warehouse {} is not a directory", path.display())),
                Err(e) => Err(format!("the warehouse {}: {e}", path.display())),
            };
        }
        let store = deltalake::DeltaTableBuilder::from_url(self.root.clone())
            .and_then(|b| b.build_storage())
            .map_err(|e| format!("the warehouse {}: {e}", self.root))?
            .object_store(None);
        store.list_with_delimiter(None).await.map(|_| ()).map_err(|e| format!("the warehouse {} does not answer: {e}", self.root))
    }

    /// A scratch warehouse for one product's rebuild, under the product's
    /// own prefix, so that its tables are apart from every live one.
    pub fn staging(&self, domain: &str, product: &str, label: &str) -> Warehouse {
        let mut root = self.root.clone();
        root.set_path(&format!("{}{domain}/{product}/_staging/{label}/", self.root.path()));
        Warehouse { root }
    }

    /// The URL of one table. Names are validated identifiers (see
    /// `tessera_core`), safe as path segments.
    pub fn table_url(&self, domain: &str, product: &str, major: u64, table: &str) -> Url {
        let mut url = self.root.clone();
        url.set_path(&format!("{}{domain}/{product}/v{major}/{table}", self.root.path()));
        url
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_laid_out_by_domain_product_major_and_table() {
        let s3 = Warehouse::parse("s3://lake/tessera", Path::new("/")).expect("s3");
        assert_eq!(s3.table_url("sales", "orders", 2, "orders").as_str(), "s3://lake/tessera/sales/orders/v2/orders");
        let dir = tempfile::tempdir().expect("dir");
        let local = Warehouse::parse("warehouse", dir.path()).expect("local");
        assert!(local.table_url("sales", "orders", 1, "order_lines").path().ends_with("/warehouse/sales/orders/v1/order_lines"));
        assert!(Warehouse::parse("ftp://x/y", dir.path()).is_err_and(|e| e.contains("ftp")));
        assert!(Warehouse::parse(" ", dir.path()).is_err());
    }
}
