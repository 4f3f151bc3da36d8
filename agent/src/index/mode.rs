//! `palisade.dev/mode`: whether a policy is enforced or only audited.
//!
//! An audited policy is evaluated, never enforced: traffic it would deny
//! passes and is logged as `would-deny`. Palisade's annotations are
//! validated like fields: an unknown `palisade.dev/` key or mode is a typo
//! that would otherwise silently change what is enforced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use crate::model::MODE_ANNOTATION;
use crate::model::Mode;

/// Annotations under this prefix are Palisade's (the source keeps them).
pub const ANNOTATION_PREFIX: &str = "palisade.dev/";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModeError {
    #[error(
        "metadata.annotations[{MODE_ANNOTATION:?}]: {0:?} is not a mode (expected \"audit\" or \"enforce\")"
    )]
    Unknown(String),
    #[error(
        "metadata.annotations[{0:?}]: unknown Palisade annotation (known: {MODE_ANNOTATION:?})"
    )]
    UnknownAnnotation(String),
    #[error(
        "metadata.annotations[{MODE_ANNOTATION:?}]: a Tier is not audited; annotate its policies"
    )]
    NotAPolicy,
}

/// The mode an object's annotations ask for (`enforce` without one).
pub fn mode_of(meta: &ObjectMeta) -> Result<Mode, ModeError> {
    let mut mode = Mode::Enforce;
    for (k, v) in meta.annotations.iter().flatten() {
        if !k.starts_with(ANNOTATION_PREFIX) {
            continue;
        }
        if k != MODE_ANNOTATION {
            return Err(ModeError::UnknownAnnotation(k.clone()));
        }
        mode = match v.as_str() {
            "audit" => Mode::Audit,
            "enforce" => Mode::Enforce,
            other => return Err(ModeError::Unknown(other.to_string())),
        };
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_mode_annotation_is_read_strictly() {
        assert_eq!(mode_of(&ObjectMeta::default()), Ok(Mode::Enforce));
        assert_eq!(mode_of(&meta(&[("other.io/x", "y")])), Ok(Mode::Enforce));
        assert_eq!(
            mode_of(&meta(&[(MODE_ANNOTATION, "audit")])),
            Ok(Mode::Audit)
        );
        assert_eq!(
            mode_of(&meta(&[(MODE_ANNOTATION, "enforce")])),
            Ok(Mode::Enforce)
        );
        let typo = mode_of(&meta(&[(MODE_ANNOTATION, "Audit")])).expect_err("rejected");
        assert!(typo.to_string().contains("palisade.dev/mode"), "{typo}");
        assert!(mode_of(&meta(&[("palisade.dev/mdoe", "audit")])).is_err());
    }
}
