pub async fn doctor(
    _cfg: &crate::config::DeployConfig,
    _env: &str,
    _out: &dyn crate::output::Output,
) -> Result<crate::ExitClass, crate::Error> {
    todo!()
}
