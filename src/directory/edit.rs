//! Editing a directory file in place, for the options page: one user's `usersettings` columns
//! and the folder rules of their mailbox. TOML keeps its comments and layout (`toml_edit`);
//! JSON is rewritten. The edited text must parse and build before it replaces the file, and it
//! replaces it atomically (a temporary file renamed over it).

use std::path::Path;

use serde_json::{Map, Value};
use uuid::Uuid;

use super::file::{DirectoryError, FileSource, parse_and_build_with};
use super::model::MailboxTrackingFolder;

/// One user's options as a save leaves them.
#[derive(Debug, Clone)]
pub struct UserOptionsEdit {
    pub user: Uuid,
    pub mailbox: Uuid,
    /// `usersettings` columns and their new values (`null` removes the column).
    pub columns: Map<String, Value>,
    /// Every folder rule of the mailbox after the change.
    pub folders: Vec<MailboxTrackingFolder>,
}

impl FileSource {
    /// Writes the edit into the directory file. The embedded example has no file to write:
    /// an error says so.
    pub fn write_user_options(&self, edit: &UserOptionsEdit) -> Result<(), DirectoryError> {
        let Some(path) = &self.path else {
            return Err(DirectoryError::Parse {
                origin: "embedded example".into(),
                message: "the embedded example cannot be written".into(),
            });
        };
        let read = |source| DirectoryError::Read {
            path: path.clone(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read)?;
        let origin = path.display().to_string();
        let parse_error = |message: String| DirectoryError::Parse {
            origin: origin.clone(),
            message,
        };
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let edited = if json {
            edit_json(&text, edit).map_err(parse_error)?
        } else {
            edit_toml(&text, edit).map_err(parse_error)?
        };
        if edited.len() as u64 > self.max_size {
            return Err(DirectoryError::TooLarge {
                path: path.clone(),
                size: edited.len() as u64,
                limit: self.max_size,
            });
        }
        // Never write what would not load.
        parse_and_build_with(&edited, &origin, json, &self.settings)?;
        replace(path, &edited).map_err(read)
    }
}

/// Writes a temporary file of its own beside `path` (keeping the file's permissions), flushes
/// it to disk, then renames it over `path`: a reader sees the old file or the new one whole.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temporary = tempfile::NamedTempFile::new_in(dir)?;
    if let Ok(meta) = std::fs::metadata(path) {
        temporary.as_file().set_permissions(meta.permissions())?;
    }
    temporary.write_all(text.as_bytes())?;
    temporary.as_file().sync_all()?;
    temporary.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn is_row(row: &Value, key: &str, id: Uuid) -> bool {
    row.get(key)
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Uuid>().ok())
        == Some(id)
}

fn edit_json(text: &str, edit: &UserOptionsEdit) -> Result<String, String> {
    let mut doc: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let root = doc.as_object_mut().ok_or("the document is not an object")?;
    let settings = root
        .entry("usersettingscollection")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("usersettingscollection is not a list")?;
    if !settings
        .iter()
        .any(|r| is_row(r, "systemuserid", edit.user))
    {
        settings.push(serde_json::json!({ "systemuserid": edit.user }));
    }
    for row in settings.iter_mut() {
        if is_row(row, "systemuserid", edit.user)
            && let Some(row) = row.as_object_mut()
        {
            for (column, value) in &edit.columns {
                match value {
                    Value::Null => row.remove(column),
                    v => row.insert(column.clone(), v.clone()),
                };
            }
        }
    }
    let folders = root
        .entry("mailboxtrackingfolders")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("mailboxtrackingfolders is not a list")?;
    folders.retain(|r| !is_row(r, "mailboxid", edit.mailbox));
    for folder in &edit.folders {
        folders.push(serde_json::to_value(folder).map_err(|e| e.to_string())?);
    }
    serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())
}

fn edit_toml(text: &str, edit: &UserOptionsEdit) -> Result<String, String> {
    use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string())?;
    let id_is = |table: &Table, key: &str, id: Uuid| {
        table
            .get(key)
            .and_then(Item::as_str)
            .and_then(|s| s.parse::<Uuid>().ok())
            == Some(id)
    };
    if !doc.contains_key("usersettingscollection") {
        doc.insert(
            "usersettingscollection",
            Item::ArrayOfTables(ArrayOfTables::new()),
        );
    }
    let settings = doc["usersettingscollection"]
        .as_array_of_tables_mut()
        .ok_or("usersettingscollection is not a list of tables")?;
    if !settings.iter().any(|t| id_is(t, "systemuserid", edit.user)) {
        let mut row = Table::new();
        row.insert("systemuserid", toml_edit::value(edit.user.to_string()));
        settings.push(row);
    }
    for row in settings.iter_mut() {
        if !id_is(row, "systemuserid", edit.user) {
            continue;
        }
        for (column, value) in &edit.columns {
            match toml_value(value) {
                Some(v) => {
                    row.insert(column, Item::Value(v));
                }
                None => {
                    row.remove(column);
                }
            }
        }
    }
    if !doc.contains_key("mailboxtrackingfolders") {
        doc.insert(
            "mailboxtrackingfolders",
            Item::ArrayOfTables(ArrayOfTables::new()),
        );
    }
    let folders = doc["mailboxtrackingfolders"]
        .as_array_of_tables_mut()
        .ok_or("mailboxtrackingfolders is not a list of tables")?;
    folders.retain(|t| !id_is(t, "mailboxid", edit.mailbox));
    for folder in &edit.folders {
        let value = serde_json::to_value(folder).map_err(|e| e.to_string())?;
        let mut row = Table::new();
        for (column, v) in value.as_object().into_iter().flatten() {
            if let Some(v) = toml_value(v) {
                row.insert(column, Item::Value(v));
            }
        }
        folders.push(row);
    }
    Ok(doc.to_string())
}

/// A JSON value as TOML (`None` for null, which TOML has not).
fn toml_value(value: &Value) -> Option<toml_edit::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into(),
            None => n.as_f64()?.into(),
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => {
            let mut array = toml_edit::Array::new();
            for item in items {
                array.push(toml_value(item)?);
            }
            toml_edit::Value::Array(array)
        }
        Value::Object(map) => {
            let mut table = toml_edit::InlineTable::new();
            for (k, v) in map {
                if let Some(v) = toml_value(v) {
                    table.insert(k, v);
                }
            }
            toml_edit::Value::InlineTable(table)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::file::EMBEDDED_EXAMPLE;
    use crate::directory::model::Lookup;

    const ALEX: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_0000000000a1);
    const ALEX_MAILBOX: Uuid = Uuid::from_u128(0x00000000_0000_4000_8000_0000000000f1);

    fn edit() -> UserOptionsEdit {
        let mut columns = Map::new();
        columns.insert("incomingemailfilteringmethod".into(), 0.into());
        columns.insert(
            "trackingexclusions".into(),
            serde_json::json!(["family.example"]),
        );
        columns.insert("addressbookcontactmatching".into(), Value::Null);
        UserOptionsEdit {
            user: ALEX,
            mailbox: ALEX_MAILBOX,
            columns,
            folders: vec![MailboxTrackingFolder {
                mailboxtrackingfolderid: None,
                mailboxid: ALEX_MAILBOX,
                exchangefolderid: "AAMkNewFolder=".into(),
                exchangefoldername: Some("New deal".into()),
                regardingobjectid: Some(Lookup::new(
                    "account",
                    Uuid::from_u128(0x00000000_0000_4000_8000_0000000000c2),
                )),
            }],
        }
    }

    fn check(doc: &crate::directory::model::DirectoryDocument) {
        let alex = doc
            .usersettingscollection
            .iter()
            .find(|s| s.systemuserid == ALEX);
        assert_eq!(alex.map(|s| s.incomingemailfilteringmethod), Some(0));
        assert_eq!(
            alex.map(|s| s.trackingexclusions.clone()),
            Some(vec!["family.example".to_owned()])
        );
        assert!(alex.is_some_and(|s| s.addressbookcontactmatching.is_none()));
        let folders: Vec<_> = doc
            .mailboxtrackingfolders
            .iter()
            .filter(|f| f.mailboxid == ALEX_MAILBOX)
            .map(|f| f.exchangefolderid.as_str())
            .collect();
        assert_eq!(folders, vec!["AAMkNewFolder="]);
    }

    #[test]
    fn a_toml_edit_changes_the_columns_and_rules_and_keeps_the_comments() {
        let edited = edit_toml(EMBEDDED_EXAMPLE, &edit()).unwrap_or_default();
        assert!(edited.contains("# --- personal options"), "{edited}");
        assert!(edited.contains("incomingemailfilteringmethod = 4   # none"));
        let doc: crate::directory::model::DirectoryDocument =
            toml::from_str(&edited).unwrap_or_default();
        check(&doc);
    }

    #[test]
    fn a_json_edit_changes_the_columns_and_rules() {
        let doc: crate::directory::model::DirectoryDocument =
            toml::from_str(EMBEDDED_EXAMPLE).unwrap_or_default();
        let text = serde_json::to_string(&doc).unwrap_or_default();
        let edited = edit_json(&text, &edit()).unwrap_or_default();
        let doc: crate::directory::model::DirectoryDocument =
            serde_json::from_str(&edited).unwrap_or_default();
        check(&doc);
    }

    #[test]
    fn a_save_that_would_not_load_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("directory.toml");
        std::fs::write(&path, EMBEDDED_EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        let source = FileSource {
            path: Some(path.clone()),
            ..FileSource::embedded()
        };
        let mut bad = edit();
        bad.columns
            .insert("incomingemailfilteringmethod".into(), 9.into());
        assert!(source.write_user_options(&bad).is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            EMBEDDED_EXAMPLE
        );
        assert!(source.write_user_options(&edit()).is_ok());
        check(&source.read_document().unwrap_or_default());
    }
}
