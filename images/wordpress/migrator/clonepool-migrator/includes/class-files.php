<?php
/**
 * Writing archive files under wp-content safely: archive names are checked, paths never go
 * through symbolic links, files are replaced atomically (temporary file + rename).
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

/** An archive the migrator will not import; nothing was changed. */
final class Clonepool_Refusal extends RuntimeException
{
    public string $error_code;
    public int $status;

    public function __construct(string $error_code, string $message, int $status = 400)
    {
        parent::__construct($message);
        $this->error_code = $error_code;
        $this->status = $status;
    }
}

final class Clonepool_Files
{
    /**
     * Normalises an archive entry name ("./a//b/" -> "a/b") or refuses it.
     *
     * @throws Clonepool_Refusal for absolute paths, "..", NUL/control characters, backslashes
     */
    public static function normalize_name(string $name, int $max_bytes): string
    {
        if ($name === '' || strlen($name) > $max_bytes) {
            throw new Clonepool_Refusal('clonepool_hostile_archive', 'archive entry with an empty or overlong name');
        }
        $shown = self::shown($name);
        if (preg_match('/[\x00-\x1f\x7f]/', $name)) {
            throw new Clonepool_Refusal('clonepool_hostile_archive', "archive entry name with control characters: $shown");
        }
        if ($name[0] === '/' || preg_match('~^[A-Za-z]:~', $name)) {
            throw new Clonepool_Refusal('clonepool_hostile_archive', "archive entry with an absolute path: $shown");
        }
        if (strpos($name, '\\') !== false) {
            throw new Clonepool_Refusal('clonepool_hostile_archive', "archive entry name with a backslash: $shown");
        }
        $parts = [];
        foreach (explode('/', $name) as $part) {
            if ($part === '' || $part === '.') {
                continue;
            }
            if ($part === '..') {
                throw new Clonepool_Refusal('clonepool_hostile_archive', "archive entry name with '..': $shown");
            }
            $parts[] = $part;
        }
        if ($parts === []) {
            return '';
        }
        return implode('/', $parts);
    }

    public static function shown(string $name): string
    {
        $clean = (string) preg_replace('/[^\x20-\x7e]/', '?', $name);
        return strlen($clean) > 200 ? substr($clean, 0, 200) . '…' : $clean;
    }

    /**
     * Where a wp-content-relative path lives on disk (a custom uploads directory is honoured).
     *
     * @return array{root:string,path:string}
     */
    public static function target(string $rel): array
    {
        $uploads = Clonepool_Site::custom_uploads_dir();
        if ($uploads !== null && ($rel === 'uploads' || strpos($rel, 'uploads/') === 0)) {
            $rest = substr($rel, strlen('uploads'));
            return ['root' => $uploads, 'path' => $uploads . $rest];
        }
        $root = Clonepool_Site::content_dir();
        return ['root' => $root, 'path' => $root . '/' . $rel];
    }

    /**
     * What writing a file (or directory) at $rel would do. Missing directories are returned as
     * wp-content-relative paths, parents first.
     *
     * @return array{action:string,path:string,reason?:string,missing_dirs:list<string>}
     *   action: create | create_dir | overwrite | exists (a directory) | through_link (a directory
     *   on the way is a symbolic link) | conflict
     */
    public static function inspect(string $rel, bool $is_dir = false): array
    {
        $t = self::target($rel);
        $root = $t['root'];
        $rel_to_root = ltrim(substr($t['path'], strlen($root)), '/');
        $rel_base = $root === Clonepool_Site::content_dir() ? '' : 'uploads';
        $parts = $rel_to_root === '' ? [] : explode('/', $rel_to_root);
        $path = $root;
        $rel_path = $rel_base;
        $missing = [];
        $n = count($parts);
        foreach ($parts as $i => $part) {
            $path .= '/' . $part;
            $rel_path = $rel_path === '' ? $part : $rel_path . '/' . $part;
            $last = $i === $n - 1;
            if ($missing === []) {
                $st = @lstat($path);
                if ($st !== false) {
                    $type = $st['mode'] & 0170000;
                    if ($type === 0120000) {
                        return ['action' => 'through_link', 'path' => $t['path'], 'missing_dirs' => [],
                            'reason' => 'the path goes through a symbolic link (' . self::shown($rel_path) . ')'];
                    }
                    if (!$last && $type !== 0040000) {
                        return ['action' => 'conflict', 'path' => $t['path'], 'missing_dirs' => [], 'reason' => 'a file is in the way of a directory'];
                    }
                    if (!$last) {
                        continue;
                    }
                    if ($is_dir) {
                        return $type === 0040000
                            ? ['action' => 'exists', 'path' => $t['path'], 'missing_dirs' => []]
                            : ['action' => 'conflict', 'path' => $t['path'], 'missing_dirs' => [], 'reason' => 'a file is in the way of a directory'];
                    }
                    if ($type !== 0100000) {
                        return ['action' => 'conflict', 'path' => $t['path'], 'missing_dirs' => [], 'reason' => 'not a regular file in the site'];
                    }
                    return ['action' => 'overwrite', 'path' => $t['path'], 'missing_dirs' => []];
                }
            }
            if (!$last || $is_dir) {
                $missing[] = $rel_path;
            }
        }
        if ($parts === []) {
            return ['action' => 'exists', 'path' => $t['path'], 'missing_dirs' => []];
        }
        return ['action' => $is_dir ? 'create_dir' : 'create', 'path' => $t['path'], 'missing_dirs' => $missing];
    }

    /**
     * Writes a file from chunks: a temporary file next to it, then rename.
     *
     * @param iterable<string> $chunks
     */
    public static function write(string $path, iterable $chunks, int $mode, int $mtime): void
    {
        $tmp = dirname($path) . '/.clonepool-' . bin2hex(random_bytes(6)) . '.tmp';
        $fh = @fopen($tmp, 'xb');
        if ($fh === false) {
            throw new RuntimeException('cannot create a file in ' . dirname($path));
        }
        try {
            foreach ($chunks as $chunk) {
                if (fwrite($fh, $chunk) !== strlen($chunk)) {
                    throw new RuntimeException('cannot write ' . $path . ' (disk full?)');
                }
            }
            if (!fclose($fh)) {
                throw new RuntimeException('cannot write ' . $path);
            }
            $fh = null;
            @chmod($tmp, ($mode & 0111) ? 0755 : 0644);
            if ($mtime > 0) {
                @touch($tmp, $mtime);
            }
            if (!@rename($tmp, $path)) {
                throw new RuntimeException('cannot replace ' . $path);
            }
        } finally {
            if ($fh !== null && $fh !== false) {
                @fclose($fh);
            }
            if (file_exists($tmp)) {
                @unlink($tmp);
            }
        }
    }

    public static function make_dir(string $path): void
    {
        if (!is_dir($path) && !@mkdir($path, 0755) && !is_dir($path)) {
            throw new RuntimeException('cannot create directory ' . $path);
        }
    }

    /** md5 of a file, or null when unreadable. */
    public static function file_md5(string $path): ?string
    {
        $h = @md5_file($path);
        return $h === false ? null : $h;
    }
}
