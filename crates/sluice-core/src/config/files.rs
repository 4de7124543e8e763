//! `[files]`: where `/v1/files` and `/v1/batches` go.

use super::raw::RawFiles;
use super::validate::Collector;
use super::{FilesConfig, ProviderConfig, ProviderKind};

/// The named provider (which must speak OpenAI's format or be the mock),
/// or by default the first provider that does.
pub(super) fn files(
    c: &mut Collector<'_>,
    raw: &RawFiles,
    providers: &[ProviderConfig],
) -> FilesConfig {
    let fit =
        |p: &ProviderConfig| !matches!(p.kind, ProviderKind::Anthropic | ProviderKind::Gemini);
    let Some(name) = &raw.provider else {
        return FilesConfig {
            provider: providers.iter().position(fit),
        };
    };
    let found = providers.iter().position(|p| &*p.name == name.get_ref());
    match found {
        Some(i) if fit(&providers[i]) => FilesConfig { provider: Some(i) },
        Some(i) => {
            c.at(
                name.span(),
                format!(
                    "provider '{}' ({}) has no files or batches API; name an OpenAI-compatible \
                     provider or the mock",
                    name.get_ref(),
                    providers[i].preset
                ),
            );
            FilesConfig::default()
        }
        None => {
            c.at(
                name.span(),
                format!("[files] names unknown provider '{}'", name.get_ref()),
            );
            FilesConfig::default()
        }
    }
}
