#if canImport(Glibc)
import Glibc
#endif
// libFuzzer's driver, started from SwiftPM's main (which renames `main`, so libFuzzer's own
// main cannot be used).
var argc = CommandLine.argc
var argv = CommandLine.unsafeArgv
exit(runFuzzerDriver(&argc, &argv, fuzzOne))
