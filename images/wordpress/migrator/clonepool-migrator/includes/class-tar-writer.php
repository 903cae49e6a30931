<?php
/**
 * Streaming tar writer: ustar headers, pax extended headers for long paths and huge sizes.
 *
 * Every byte goes straight to a sink callable; nothing is kept in memory beyond one read chunk.
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Tar_Writer
{
    private const BLOCK = 512;
    private const CHUNK = 1048576;
    /** Largest size an 11-digit octal field holds (8 GiB - 1). */
    private const USTAR_MAX_SIZE = 077777777777;

    /** @var callable(string):void */
    private $sink;
    private int $bytes = 0;
    private int $uid;
    private int $gid;
    private string $owner;
    private string $group;

    /**
     * @param callable(string):void $sink receives the archive bytes in order
     */
    public function __construct(callable $sink, int $uid = 33, int $gid = 33, string $owner = 'www-data', string $group = 'www-data')
    {
        $this->sink = $sink;
        $this->uid = $uid;
        $this->gid = $gid;
        $this->owner = $owner;
        $this->group = $group;
    }

    /** Bytes emitted so far. */
    public function bytes(): int
    {
        return $this->bytes;
    }

    public function add_directory(string $name, int $mode = 0755, ?int $mtime = null): void
    {
        $name = rtrim($name, '/') . '/';
        $this->emit($this->headers($name, 0, $mode, $mtime ?? time(), '5'));
    }

    public function add_string(string $name, string $data, int $mode = 0644, ?int $mtime = null): void
    {
        $size = strlen($data);
        $this->emit($this->headers($name, $size, $mode, $mtime ?? time(), '0'));
        if ($size > 0) {
            $this->emit($data);
        }
        $this->pad($size);
    }

    /**
     * Copies an open file into the archive under $name, declaring $size bytes. When the file
     * shrank since it was measured the entry is padded with NUL bytes; when it grew, the extra
     * bytes are left out. Either way the archive stays well-formed.
     *
     * @param resource $handle
     * @return bool true when exactly $size bytes were read from the file
     */
    public function add_stream(string $name, $handle, int $size, int $mode = 0644, ?int $mtime = null): bool
    {
        $this->emit($this->headers($name, $size, $mode, $mtime ?? time(), '0'));
        $left = $size;
        while ($left > 0) {
            $chunk = fread($handle, min(self::CHUNK, $left));
            if ($chunk === false || $chunk === '') {
                break;
            }
            $left -= strlen($chunk);
            $this->emit($chunk);
        }
        $exact = $left === 0 && ($size === 0 || fread($handle, 1) === '');
        while ($left > 0) {
            $zeros = min(self::CHUNK, $left);
            $this->emit(str_repeat("\0", $zeros));
            $left -= $zeros;
        }
        $this->pad($size);
        return $exact;
    }

    /** Writes the end-of-archive marker (two zero blocks). */
    public function finish(): void
    {
        $this->emit(str_repeat("\0", 2 * self::BLOCK));
    }

    private function pad(int $size): void
    {
        $rest = $size % self::BLOCK;
        if ($rest !== 0) {
            $this->emit(str_repeat("\0", self::BLOCK - $rest));
        }
    }

    private function emit(string $bytes): void
    {
        $this->bytes += strlen($bytes);
        ($this->sink)($bytes);
    }

    /**
     * The header block(s) of one entry: a pax extended header first when the path does not fit
     * ustar's name/prefix fields or the size does not fit 11 octal digits.
     */
    private function headers(string $name, int $size, int $mode, int $mtime, string $type): string
    {
        $pax = [];
        [$prefix, $short] = self::split_name($name);
        if ($short === null) {
            $pax['path'] = $name;
            $short = substr(self::ascii_fallback($name), -100);
            $prefix = '';
        }
        $header_size = $size;
        if ($size > self::USTAR_MAX_SIZE) {
            $pax['size'] = (string) $size;
            $header_size = 0;
        }
        $out = '';
        if ($pax !== []) {
            $records = '';
            foreach ($pax as $key => $value) {
                $records .= self::pax_record($key, $value);
            }
            $pax_name = substr('PaxHeaders/' . basename(self::ascii_fallback($name)), 0, 100);
            $out .= $this->block($pax_name, '', strlen($records), 0644, $mtime, 'x');
            $out .= $records . str_repeat("\0", (self::BLOCK - strlen($records) % self::BLOCK) % self::BLOCK);
        }
        return $out . $this->block($short, $prefix, $header_size, $mode, $mtime, $type);
    }

    private function block(string $name, string $prefix, int $size, int $mode, int $mtime, string $type): string
    {
        $header = pack(
            'a100a8a8a8a12a12',
            $name,
            sprintf('%07o', $mode & 07777),
            sprintf('%07o', $this->uid),
            sprintf('%07o', $this->gid),
            sprintf('%011o', $size),
            sprintf('%011o', max(0, min($mtime, 077777777777)))
        );
        $header .= '        ' . $type . pack('a100', '') . "ustar\x0000"
            . pack('a32a32a8a8a155a12', $this->owner, $this->group, '', '', $prefix, '');
        $sum = array_sum(unpack('C*', $header));
        return substr_replace($header, sprintf('%06o', $sum) . "\0 ", 148, 8);
    }

    /**
     * Splits a path into ustar's prefix (<= 155 bytes) and name (<= 100 bytes) at a slash.
     *
     * @return array{0:string,1:?string} [prefix, name]; name null when it cannot be split
     */
    private static function split_name(string $name): array
    {
        if (strlen($name) <= 100) {
            return ['', $name];
        }
        $trailing = substr($name, -1) === '/' ? '/' : '';
        $body = $trailing === '' ? $name : substr($name, 0, -1);
        $pos = -1;
        while (($pos = strpos($body, '/', $pos + 1)) !== false) {
            $rest = substr($body, $pos + 1) . $trailing;
            if (strlen($rest) <= 100) {
                // The first slash that leaves a short enough name gives the shortest prefix.
                return ($pos <= 155 && $rest !== $trailing) ? [substr($body, 0, $pos), $rest] : ['', null];
            }
        }
        return ['', null];
    }

    private static function pax_record(string $key, string $value): string
    {
        $payload = ' ' . $key . '=' . $value . "\n";
        $n = strlen($payload);
        $digits = strlen((string) $n);
        while (strlen((string) ($n + $digits)) > $digits) {
            $digits++;
        }
        return ($n + $digits) . $payload;
    }

    private static function ascii_fallback(string $name): string
    {
        return (string) preg_replace('/[^\x20-\x7e]/', '_', $name);
    }
}
