//! Which networks convert, and the CRU network they convert to.
use super::{ConvertError, Result};
use crate::arch::spec::{NetSpec, UnitSpec};

/// Checks that `src` is a pre-activation ResNeXt: every stage of aggregated units with at least
/// 2 groups, pre-activation, the projection reusing the first BN-ReLU (what
/// `netgen train --R R --rank D --preact` builds).
pub fn check_source(src: &NetSpec) -> Result<()> {
    src.validate()?;
    let bad = |m: String| Err(ConvertError::Source(m));
    for (s, st) in src.stages.iter().enumerate() {
        match st.unit {
            UnitSpec::Cru { .. } => {
                return bad(format!(
                    "the source is already a CRU network (stage conv{} has CRU units); convert a ResNeXt run \
                     (netgen train --R R --rank D --preact)",
                    s + 2
                ));
            }
            UnitSpec::Aggregated { groups: 1, .. } => {
                return bad(format!(
                    "the source is a ResNet (stage conv{} has 1 group): its bottlenecks are single Tuckers, there are \
                     no grouped kernels to factorize collectively; convert a ResNeXt run (--R ≥ 2 --preact)",
                    s + 2
                ));
            }
            UnitSpec::Aggregated { .. } => {}
        }
    }
    if !src.preact {
        return bad(
            "the source is a post-activation ResNeXt; the CRU units are pre-activation (BN-ReLU before each conv), \
             so only a pre-activation ResNeXt maps onto them: train the source with --preact"
                .into(),
        );
    }
    if src.separate_projection_bn {
        return bad(
            "the source's projections have their own BN (separate_projection_bn); convert a ResNeXt trained with \
             netgen train --R R --rank D --preact"
                .into(),
        );
    }
    Ok(())
}

/// The CRU network for `src` with share groups of `share` units: the same stem, stage depths,
/// widths, strides, bottleneck widths and head; every stage with depth ≥ `share` becomes a CRU stage
/// (with the extra 1×1) of `terms` groups (default: the source's groups) and width `mid`; the
/// network becomes pre-activation with separate projection BN-ReLUs, exactly as
/// [`crate::arch::config::GbtdConfig::to_spec`] builds a CRU-Net. `share = 1` gives CRU units that
/// share nothing (each unit its own group), for checking the conversion's exactness.
///
/// Refused: no stage with depth ≥ `share`; a `share` that does not divide a CRU stage's depth
/// (uneven groups, as `netgen emit` refuses them); `terms` not dividing a CRU stage's `mid`.
pub fn target_spec(src: &NetSpec, share: usize, terms: Option<usize>) -> Result<NetSpec> {
    check_source(src)?;
    let bad = |m: String| Err(ConvertError::Source(m));
    if share == 0 {
        return bad("--share 0: the share-group size L must be ≥ 1".into());
    }
    let depths: Vec<usize> = src.stages.iter().map(|s| s.depth).collect();
    if depths.iter().all(|&d| d < share) {
        return bad(format!(
            "share {share} is larger than every stage depth {depths:?}; use 1 ≤ --share ≤ {}",
            depths.iter().max().copied().unwrap_or(1)
        ));
    }
    let mut t = src.clone();
    for (s, st) in t.stages.iter_mut().enumerate() {
        if st.depth < share {
            continue;
        }
        if !st.depth.is_multiple_of(share) {
            return bad(format!(
                "share {share} does not divide the {} units of stage conv{} (uneven share groups); use a share that \
                 divides every stage depth ≥ {share}",
                st.depth,
                s + 2
            ));
        }
        let (mid, groups) = (st.unit.mid(), st.unit.groups());
        let r = terms.unwrap_or(groups);
        if r == 0 || !mid.is_multiple_of(r) {
            return bad(format!(
                "--terms {r} does not divide the bottleneck width {mid} of stage conv{}; the CRU keeps the width \
                 (its extra 1×1 is mid × mid), so choose R among the divisors of {mid}",
                s + 2
            ));
        }
        st.unit = UnitSpec::Cru {
            mid,
            groups: r,
            share,
            extra_conv: true,
        };
    }
    t.separate_projection_bn = true;
    t.name = format!("{} → CRU (L = {share})", src.name);
    t.validate()?;
    Ok(t)
}
