//! Quiver's C ABI (issue 4): not built yet. The crate holds its place in the
//! workspace (cdylib + staticlib) so the layering ffi → flight → engine is
//! fixed from the start; the functions, the cbindgen header and the Arrow C
//! Data Interface exports come with issue 4.
