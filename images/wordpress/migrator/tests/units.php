<?php
// Unit checks of the migrator's pure pieces (tar writer/reader, SQL splitter and classifier,
// archive name checks) on the host's php-cli, without WordPress. Run by
// tests/tests/migrator_php.rs; prints "ok: N checks" or the failures and exits 1.
// Usage: php units.php PLUGIN_DIR

define('ABSPATH', '/nonexistent/');
$dir = $argv[1] ?? (__DIR__ . '/../clonepool-migrator');
foreach (['class-tar-writer', 'class-tar-reader', 'class-sql-splitter', 'class-files'] as $f) {
    require "$dir/includes/$f.php";
}

$checks = 0;
$failures = [];
function check(bool $ok, string $what): void
{
    global $checks, $failures;
    $checks++;
    if (!$ok) {
        $failures[] = $what;
    }
}
function throws(callable $fn, string $class, string $what): void
{
    try {
        $fn();
        check(false, "$what: no exception");
    } catch (Throwable $e) {
        check($e instanceof $class, "$what: got " . get_class($e) . ': ' . $e->getMessage());
    }
}
function read_all(string $tar): array
{
    $fh = fopen('php://memory', 'w+b');
    fwrite($fh, $tar);
    rewind($fh);
    $r = new Clonepool_Tar_Reader($fh);
    $out = [];
    while (($e = $r->next()) !== null) {
        $out[] = [$e['type'], $e['name'], $e['type'] === '0' ? $r->contents(1 << 24) : '', $e['linkname']];
    }
    return $out;
}

// --- tar writer + reader ---------------------------------------------------------------------
$bytes = '';
$w = new Clonepool_Tar_Writer(function (string $b) use (&$bytes) {
    $bytes .= $b;
});
$names = [
    'manifest.json',
    'wp-content/' . str_repeat('d', 90) . '/' . str_repeat('e', 90) . '/split.txt', // ustar prefix
    'wp-content/' . str_repeat('x', 150) . '.txt',                                   // pax path
    'wp-content/uploads/ünïcödé ' . str_repeat('ü', 70) . '.txt',                    // multibyte, pax
];
$w->add_directory('wp-content', 0755, 1700000000);
foreach ($names as $i => $n) {
    $w->add_string($n, "content $i\n");
}
$binary = '';
for ($i = 0; $i < 3000; $i++) {
    $binary .= chr($i % 256);
}
$fh = fopen('php://memory', 'w+b');
fwrite($fh, $binary);
rewind($fh);
check($w->add_stream('wp-content/bin.dat', $fh, strlen($binary), 0644, 1) === true, 'exact stream reports true');
$fh = fopen('php://memory', 'w+b');
fwrite($fh, 'short');
rewind($fh);
check($w->add_stream('wp-content/shrunk.dat', $fh, 10, 0644, 1) === false, 'a shrunk file reports false');
$w->finish();
check(strlen($bytes) % 512 === 0 && $w->bytes() === strlen($bytes), 'archive is whole blocks, bytes() counts them');
$entries = read_all($bytes);
check(count($entries) === 7, 'all entries read back (' . count($entries) . ')');
check($entries[0] === ['5', 'wp-content/', '', ''], 'directory entry');
foreach ($names as $i => $n) {
    check(($entries[$i + 1][1] ?? null) === $n, "name round trip: $n");
    check(($entries[$i + 1][2] ?? null) === "content $i\n", "data round trip: $n");
}
check($entries[5][2] === $binary, 'binary data round trip');
check($entries[6][2] === "short\0\0\0\0\0", 'a shrunk file is padded with NUL to its declared size');
if (trim((string) shell_exec('command -v tar')) !== '') {
    $tmp = tempnam(sys_get_temp_dir(), 'cpm');
    file_put_contents($tmp, $bytes);
    $listed = explode("\n", trim((string) shell_exec('tar -tf ' . escapeshellarg($tmp) . ' 2>&1')));
    unlink($tmp);
    check($listed === array_merge(['wp-content/'], $names, ['wp-content/bin.dat', 'wp-content/shrunk.dat']), 'GNU tar lists the same names: ' . implode(' | ', $listed));
}

// Damaged archives are refused.
throws(function () use ($bytes) {
    read_all(substr($bytes, 0, 1536));
}, 'Clonepool_Tar_Exception', 'truncated archive');
throws(function () use ($bytes) {
    read_all(substr($bytes, 0, strlen($bytes) - 1024));
}, 'Clonepool_Tar_Exception', 'archive without end marker');
throws(function () {
    read_all(str_repeat('not a tar ', 200));
}, 'Clonepool_Tar_Exception', 'garbage');
$bad = $bytes;
$bad[10] = 'Z'; // inside the first name: checksum no longer matches
throws(function () use ($bad) {
    read_all($bad);
}, 'Clonepool_Tar_Exception', 'bad checksum');

// --- SQL splitter ----------------------------------------------------------------------------
$dump = "/*M!999999\\- enable the sandbox mode */ \n-- MariaDB dump\n/*!40101 SET NAMES utf8mb4 */;\n"
    . "DROP TABLE IF EXISTS `wp_options`;\n/* a comment; with a semicolon */\n"
    . "CREATE TABLE `wp_options` (\n  `id` int, # hash; comment\n  `v` text COMMENT 'it''s; \"x\"'\n);\n"
    . "LOCK TABLES `wp_options` WRITE;\n"
    . "INSERT INTO `wp_options` VALUES (1,'a\\'b;c','x\\\\'),(2,'-- no comment','/* no */'),(3,\"dq;\\\"\",'#');\n"
    . "UNLOCK TABLES;\nDELIMITER ;;\n/*!50003 CREATE*/ /*!50003 TRIGGER t BEFORE INSERT ON wp_x FOR EACH ROW BEGIN SET NEW.a = 1; END */;;\nDELIMITER ;\n"
    . "INSERT INTO wp_y (a) VALUES ('last; no delimiter')";
$expected = [
    '/*!40101 SET NAMES utf8mb4 */',
    'DROP TABLE IF EXISTS `wp_options`',
    "CREATE TABLE `wp_options` (\n  `id` int,  \n  `v` text COMMENT 'it''s; \"x\"'\n)",
    'LOCK TABLES `wp_options` WRITE',
    "INSERT INTO `wp_options` VALUES (1,'a\\'b;c','x\\\\'),(2,'-- no comment','/* no */'),(3,\"dq;\\\"\",'#')",
    'UNLOCK TABLES',
    '/*!50003 CREATE*/ /*!50003 TRIGGER t BEFORE INSERT ON wp_x FOR EACH ROW BEGIN SET NEW.a = 1; END */',
    "INSERT INTO wp_y (a) VALUES ('last; no delimiter')",
];
function split_sql(string $sql, int $step): array
{
    $s = new Clonepool_Sql_Splitter();
    $out = [];
    for ($i = 0; $i < strlen($sql); $i += $step) {
        foreach ($s->feed(substr($sql, $i, $step)) as $st) {
            $out[] = $st['sql'];
        }
    }
    foreach ($s->finish() as $st) {
        $out[] = $st['sql'];
    }
    return $out;
}
check(split_sql($dump, strlen($dump)) === $expected, 'splitter statements: ' . json_encode(split_sql($dump, strlen($dump))));
for ($step = 1; $step <= 64; $step++) {
    check(split_sql($dump, $step) === $expected, "splitter gives the same statements when fed $step bytes at a time");
}
$s = new Clonepool_Sql_Splitter();
$st = $s->feed("INSERT INTO t VALUES ('secret; stuff', 2);");
check(($st[0]['code'] ?? '') === "INSERT INTO t VALUES ('', 2)", 'code has string contents removed: ' . ($st[0]['code'] ?? ''));
throws(function () {
    $s = new Clonepool_Sql_Splitter();
    $s->feed("INSERT INTO t VALUES ('unterminated");
    $s->finish();
}, 'Clonepool_Sql_Exception', 'unterminated string');
throws(function () {
    $s = new Clonepool_Sql_Splitter(100);
    $s->feed("INSERT INTO t VALUES ('" . str_repeat('a', 200));
}, 'Clonepool_Sql_Exception', 'statement over the size limit');

// --- classifier ------------------------------------------------------------------------------
$cases = [
    ['/*!40101 SET NAMES utf8mb4 */', 'set', null],
    ['SET @OLD_SQL_MODE=@@SQL_MODE', 'set', null],
    ['LOCK TABLES `wp_posts` WRITE', 'ignore', null],
    ['DROP TABLE IF EXISTS `wp_posts`', 'table', 'wp_posts'],
    ['CREATE TABLE `wp_po``sts` (id int)', 'table', 'wp_po`sts'],
    ["INSERT INTO `wp_posts` VALUES (1,'')", 'table', 'wp_posts'],
    ["INSERT IGNORE INTO wp_posts (a,b) VALUES (1,'')", 'table', 'wp_posts'],
    ["REPLACE INTO `wp_options` VALUES (1,'')", 'table', 'wp_options'],
    ['/*!40000 ALTER TABLE `wp_posts` DISABLE KEYS */', 'table', 'wp_posts'],
    ['TRUNCATE TABLE `wp_posts`', 'table', 'wp_posts'],
    ['/*!50003 CREATE*/ /*!50017 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t BEFORE INSERT ON wp_x FOR EACH ROW SET NEW.a = 1 */', 'skip', null],
    ['CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`localhost` SQL SECURITY DEFINER VIEW `v` AS select 1', 'skip', null],
    ['DROP DATABASE wordpress', 'refuse', null],
    ['USE `mysql`', 'refuse', null],
    ['GRANT ALL ON *.* TO x', 'refuse', null],
    ["SELECT 1 INTO OUTFILE ''", 'refuse', null],
    ["LOAD DATA INFILE '' INTO TABLE wp_posts", 'refuse', null],
    ['SET GLOBAL max_connections = 1', 'refuse', null],
    ['INSERT INTO `wp_x` SELECT * FROM mysql.user', 'refuse', null],
    ['INSERT INTO `wp_x` VALUES ((SELECT 1))', 'refuse', null],
    ['CREATE TABLE `wp_x` AS SELECT * FROM mysql.user', 'refuse', null],
    ['CREATE TABLE `wp_x` (a int) SELECT 1', 'refuse', null],
    ['DROP TABLE `other`.`wp_posts`', 'refuse', null],
    ["INSERT INTO other.wp_posts VALUES (1)", 'refuse', null],
    ['ALTER TABLE `wp_posts` RENAME TO `x`', 'refuse', null],
];
foreach ($cases as [$code, $kind, $table]) {
    $c = Clonepool_Sql_Classifier::classify($code);
    check($c['kind'] === $kind && ($c['table'] ?? null) === $table, "classify($code) = " . json_encode($c));
}

// --- archive entry names ---------------------------------------------------------------------
check(Clonepool_Files::normalize_name('./wp-content//uploads/./a.png', 4096) === 'wp-content/uploads/a.png', 'names are normalised');
check(Clonepool_Files::normalize_name('wp-content/uploads/', 4096) === 'wp-content/uploads', 'trailing slash dropped');
foreach (['/etc/passwd', 'wp-content/../../etc/passwd', '..', 'C:/x', "wp-content/a\\b", "wp-content/a\nb", "a\0b", '', str_repeat('a', 5000)] as $bad) {
    throws(function () use ($bad) {
        Clonepool_Files::normalize_name($bad, 4096);
    }, 'Clonepool_Refusal', 'hostile name ' . json_encode($bad, JSON_INVALID_UTF8_SUBSTITUTE));
}

if ($failures !== []) {
    fwrite(STDERR, count($failures) . " of $checks checks failed:\n  " . implode("\n  ", $failures) . "\n");
    exit(1);
}
echo "ok: $checks checks\n";
