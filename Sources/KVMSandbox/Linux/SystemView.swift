#if canImport(Glibc)
import Glibc
#endif

/// The default read-only view of the host system every program gets
/// (`SandboxConfiguration.systemView`): what ordinary programs need to work, nothing that
/// identifies the host or its users.
///
/// | guest path | what it is |
/// |---|---|
/// | `/usr` (and `/bin`, `/sbin`, `/lib`, `/lib64`) | the host's, read-only: programs, libraries, `/usr/share` (time zones, perl and tcl libraries, magic, fonts) |
/// | `/etc/alternatives`, `ssl`, `ca-certificates*`, `fonts`, `ld.so.*`, `ld-musl-*`, `localtime`, `timezone`, `nsswitch.conf`, `mime.types`, `magic*`, `protocols`, `services`, `networks`, `ethertypes`, `gai.conf`, `host.conf`, `inputrc`, `locale.alias`, `papersize`, `profile`, `profile.d`, `bash.bashrc`, `login.defs`, `debian_version`, `os-release`, `perl`, `python3*`, `java-*`, `php*`, `ImageMagick-*`, `R`, `vim`, `emacs`, `matplotlibrc` | the host's, read-only (those that exist) |
/// | `/etc/passwd`, `/etc/group` | synthesized: root, nobody (the guest runs as root) |
/// | `/etc/hostname`, `/etc/hosts` | synthesized: `sandbox`, localhost |
///
/// Never: `/etc/shadow` and the rest of `/etc`, `/home`, `/root`, `/var`, `/tmp`, the host's
/// `/proc`, `/sys`, machine id or hostname. Grants of the configuration take precedence (the
/// most specific path wins).
public enum SystemView {
    /// The host paths shown read-only, at the same guest paths (those that exist).
    public static let hostPaths: [String] = ["/usr", "/bin", "/sbin", "/lib", "/lib64"] + etcEntries.map { "/etc/" + $0 }

    /// The `/etc` entries shown; a trailing `*` matches every entry with that prefix.
    static let etcEntries = [
        "alternatives", "ssl", "ca-certificates", "ca-certificates.conf", "fonts", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
        "ld-musl-x86_64.path", "localtime", "timezone", "nsswitch.conf", "mime.types", "magic", "magic.mime", "protocols",
        "services", "networks", "ethertypes", "gai.conf", "host.conf", "inputrc", "locale.alias", "papersize", "profile",
        "profile.d", "bash.bashrc", "login.defs", "debian_version", "os-release", "perl", "python3*", "java-*", "php*",
        "ImageMagick-*", "R", "vim", "emacs", "matplotlibrc",
    ]

    /// Whether `path` holds credentials or keys (`/etc/shadow`, `/etc/sudoers`, ssh and gpg
    /// keys, cloud and registry credentials, anything under `/root`): never suggested as a
    /// grant when the guest looks for it.
    public static func holdsCredentials(_ path: String) -> Bool {
        let components = path.split(separator: "/")
        if components.first == "root" { return true }
        if components.contains(where: { [".ssh", ".gnupg", ".aws", ".docker", ".kube", ".netrc", ".git-credentials", ".pgpass"].contains($0) }) { return true }
        return ["/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d", "/etc/ssh", "/etc/ssl/private"]
            .contains { path == $0 || path.hasPrefix($0 + "/") }
    }

    /// Files synthesized in place of the host's (they would name its users and its name).
    static let synthesized: [String: String] = [
        "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
        "/etc/hostname": "sandbox\n",
        "/etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ]

    /// Read-only grants for the view's host paths that exist and that `existing` grants do not
    /// already cover.
    static func grants(existing: [FileGrant]) -> [FileGrant] {
        var paths: [String] = []
        for path in hostPaths {
            guard path.hasSuffix("*") else { paths.append(path); continue }
            let prefix = String(path.dropLast()), directory = FileSystemView.parent(of: prefix)
            let leaf = FileSystemView.lastComponent(of: prefix)
            guard let handle = opendir(directory) else { continue }
            defer { closedir(handle) }
            while let entry = readdir(handle) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasPrefix(leaf) { paths.append(directory + "/" + name) }
            }
        }
        // Roots normalized once (every exec of a process tree asks again: it must be cheap).
        var roots = existing.map { FileSystemView.normalize($0.guestPath, cwd: "/") }
        var grants: [FileGrant] = []
        for path in paths where !covered(path, roots: roots) && exists(path) {
            grants.append(FileGrant(hostPath: path))
            roots.append(path)
        }
        return grants
    }

    static func exists(_ path: String) -> Bool {
        var status = stat()
        return stat(path, &status) == 0
    }

    /// Whether one of `grants` shows `path` already.
    static func covered(_ path: String, by grants: [FileGrant]) -> Bool {
        covered(path, roots: grants.map { FileSystemView.normalize($0.guestPath, cwd: "/") })
    }

    /// Whether one of the normalized guest paths `roots` is `path` or a directory above it.
    static func covered(_ path: String, roots: [String]) -> Bool {
        roots.contains { root in path == root || path.hasPrefix(root == "/" ? "/" : root + "/") }
    }
}
