<?php
/**
 * Streaming tar reader: ustar, pax ('x' and 'g') and GNU long names ('L', 'K'), GNU base-256
 * sizes. Reads headers one at a time from a stream; entry data is read in chunks or skipped.
 * It reports what the archive says; deciding what is allowed is the importer's job.
 *
 * @package clonepool-migrator
 */

defined('ABSPATH') || exit;

final class Clonepool_Tar_Exception extends RuntimeException
{
}

final class Clonepool_Tar_Reader
{
    private const BLOCK = 512;
    /** Metadata entries (pax, GNU long names) larger than this are refused. */
    private const MAX_META = 1048576;

    /** @var resource */
    private $stream;
    /** Bytes of the current entry's data (plus padding) not consumed yet. */
    private int $pending = 0;
    private int $pending_data = 0;
    private bool $ended = false;
    private int $headers_read = 0;

    /** @param resource $stream positioned at the archive's start */
    public function __construct($stream)
    {
        $this->stream = $stream;
    }

    /**
     * The next entry, or null at the end-of-archive marker. Skips whatever is left of the
     * previous entry's data.
     *
     * @return array{name:string,type:string,size:int,mode:int,mtime:int,linkname:string,offset:int|false,header_count:int}|null
     * @throws Clonepool_Tar_Exception on a damaged or truncated archive
     */
    public function next(): ?array
    {
        if ($this->ended) {
            return null;
        }
        $this->skip_rest();
        $long_name = null;
        $long_link = null;
        $pax = [];
        $meta_headers = 0;
        while (true) {
            $block = $this->read_exact(self::BLOCK, true);
            if ($block === null) {
                throw new Clonepool_Tar_Exception('the archive ends without its end-of-archive marker (truncated?)');
            }
            if ($block === str_repeat("\0", self::BLOCK)) {
                $this->ended = true;
                // The second zero block is optional for readers; consume it when present.
                $this->read_exact(self::BLOCK, true);
                return null;
            }
            $this->headers_read++;
            $h = $this->parse_header($block);
            $type = $h['type'];
            if (in_array($type, ['x', 'g', 'L', 'K'], true)) {
                if (++$meta_headers > 16) {
                    throw new Clonepool_Tar_Exception('too many metadata headers in a row');
                }
                if ($h['size'] > self::MAX_META) {
                    throw new Clonepool_Tar_Exception('a metadata entry is larger than ' . self::MAX_META . ' bytes');
                }
                $data = $h['size'] > 0 ? $this->read_exact($h['size']) : '';
                $this->read_exact((self::BLOCK - $h['size'] % self::BLOCK) % self::BLOCK);
                if ($type === 'x') {
                    $pax = array_merge($pax, self::parse_pax($data));
                } elseif ($type === 'L') {
                    $long_name = rtrim($data, "\0");
                } elseif ($type === 'K') {
                    $long_link = rtrim($data, "\0");
                }
                continue;
            }
            $name = $pax['path'] ?? $long_name ?? $h['name'];
            $linkname = $pax['linkpath'] ?? $long_link ?? $h['linkname'];
            $size = $h['size'];
            if (isset($pax['size'])) {
                if (!preg_match('/^\d{1,19}$/', $pax['size'])) {
                    throw new Clonepool_Tar_Exception('bad pax size');
                }
                $size = (int) $pax['size'];
            }
            // Links, directories and devices carry no data whatever their size field says.
            $data_size = in_array($type, ['1', '2', '3', '4', '5', '6'], true) ? 0 : $size;
            $offset = ftell($this->stream);
            $this->pending_data = $data_size;
            $this->pending = $data_size + (self::BLOCK - $data_size % self::BLOCK) % self::BLOCK;
            return [
                'name' => $name,
                'type' => $type === "\0" ? '0' : $type,
                'size' => $data_size,
                'mode' => $h['mode'],
                'mtime' => $h['mtime'],
                'linkname' => $linkname,
                'offset' => $offset,
                'header_count' => $this->headers_read,
            ];
        }
    }

    /**
     * Reads the current entry's data in chunks.
     *
     * @return Generator<int,string>
     */
    public function chunks(int $chunk = 1048576): Generator
    {
        while ($this->pending_data > 0) {
            $want = min($chunk, $this->pending_data);
            $data = $this->read_exact($want);
            $this->pending_data -= $want;
            $this->pending -= $want;
            yield $data;
        }
    }

    /** Reads the whole current entry (only for small entries such as the manifest). */
    public function contents(int $max): string
    {
        if ($this->pending_data > $max) {
            throw new Clonepool_Tar_Exception("an entry is larger than the $max bytes allowed for it");
        }
        $out = '';
        foreach ($this->chunks() as $c) {
            $out .= $c;
        }
        return $out;
    }

    private function skip_rest(): void
    {
        if ($this->pending <= 0) {
            return;
        }
        $meta = stream_get_meta_data($this->stream);
        if ($meta['seekable'] && fseek($this->stream, $this->pending, SEEK_CUR) === 0) {
            // A seek past the end succeeds; the next header read notices the truncation.
            $this->pending = 0;
            $this->pending_data = 0;
            return;
        }
        while ($this->pending > 0) {
            $n = min(1048576, $this->pending);
            $this->read_exact($n);
            $this->pending -= $n;
        }
        $this->pending_data = 0;
    }

    /** Reads exactly $n bytes; at a clean EOF returns null when $eof_ok, else throws. */
    private function read_exact(int $n, bool $eof_ok = false): ?string
    {
        if ($n === 0) {
            return '';
        }
        $out = '';
        while (strlen($out) < $n) {
            $chunk = fread($this->stream, $n - strlen($out));
            if ($chunk === false || $chunk === '') {
                if ($out === '' && $eof_ok) {
                    return null;
                }
                throw new Clonepool_Tar_Exception('the archive is truncated');
            }
            $out .= $chunk;
        }
        return $out;
    }

    /** @return array{name:string,mode:int,size:int,mtime:int,type:string,linkname:string} */
    private function parse_header(string $block): array
    {
        $stored = self::octal(substr($block, 148, 8));
        $unsigned = array_sum(unpack('C*', substr_replace($block, '        ', 148, 8)));
        $signed = 0;
        foreach (unpack('c*', substr_replace($block, '        ', 148, 8)) as $b) {
            $signed += $b;
        }
        if ($stored === null || ($stored !== $unsigned && $stored !== $signed)) {
            throw new Clonepool_Tar_Exception('bad tar header checksum (not a tar archive, or damaged)');
        }
        $name = self::cstr(substr($block, 0, 100));
        if (substr($block, 257, 5) === 'ustar') {
            $prefix = self::cstr(substr($block, 345, 155));
            if ($prefix !== '' && substr($block, 257, 6) === "ustar\0") {
                $name = $prefix . '/' . $name;
            }
        }
        $size = self::number(substr($block, 124, 12));
        $mode = self::octal(substr($block, 100, 8));
        $mtime = self::number(substr($block, 136, 12));
        if ($size === null || $size < 0) {
            throw new Clonepool_Tar_Exception('bad size field in a tar header');
        }
        return [
            'name' => $name,
            'mode' => $mode ?? 0644,
            'size' => $size,
            'mtime' => $mtime ?? 0,
            'type' => $block[156],
            'linkname' => self::cstr(substr($block, 157, 100)),
        ];
    }

    private static function cstr(string $field): string
    {
        $nul = strpos($field, "\0");
        return $nul === false ? $field : substr($field, 0, $nul);
    }

    private static function octal(string $field): ?int
    {
        $field = trim(self::cstr($field), " \0");
        if ($field === '') {
            return 0;
        }
        if (!preg_match('/^[0-7]{1,22}$/', $field)) {
            return null;
        }
        return (int) octdec($field);
    }

    /** An octal field, or GNU's base-256 encoding (high bit of the first byte set). */
    private static function number(string $field): ?int
    {
        if ($field !== '' && (ord($field[0]) & 0x80)) {
            if (ord($field[0]) !== 0x80) {
                return null; // negative or absurdly large
            }
            $value = 0;
            for ($i = 1, $n = strlen($field); $i < $n; $i++) {
                if ($value > (PHP_INT_MAX >> 8)) {
                    return null;
                }
                $value = ($value << 8) | ord($field[$i]);
            }
            return $value;
        }
        return self::octal($field);
    }

    /** @return array<string,string> */
    private static function parse_pax(string $data): array
    {
        $out = [];
        $pos = 0;
        $len = strlen($data);
        while ($pos < $len) {
            $space = strpos($data, ' ', $pos);
            if ($space === false) {
                throw new Clonepool_Tar_Exception('bad pax header');
            }
            $rec_len = substr($data, $pos, $space - $pos);
            if (!ctype_digit($rec_len) || (int) $rec_len < 5 || $pos + (int) $rec_len > $len) {
                throw new Clonepool_Tar_Exception('bad pax record length');
            }
            $record = substr($data, $space + 1, $pos + (int) $rec_len - $space - 2);
            $eq = strpos($record, '=');
            if ($eq === false || $data[$pos + (int) $rec_len - 1] !== "\n") {
                throw new Clonepool_Tar_Exception('bad pax record');
            }
            $out[substr($record, 0, $eq)] = substr($record, $eq + 1);
            $pos += (int) $rec_len;
        }
        return $out;
    }
}
