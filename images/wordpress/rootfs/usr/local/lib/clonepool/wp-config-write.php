<?php
// clonepool-wp-config: writes /etc/wordpress/config-default.php (0640 root:www-data) from
// key=value lines on stdin: db_password (required), site_url (optional, checked but not written:
// the site URL lives in the database options), table_prefix (optional, default wp_).
// Salts and keys are fresh random strings from /dev/urandom on every call.
require __DIR__ . '/common.php';

$tool = 'clonepool-wp-config';
const CONFIG_DIR = '/etc/wordpress';
const CONFIG_FILE = CONFIG_DIR . '/config-default.php';

if (posix_getuid_or_null() !== 0) {
    clonepool_fail($tool, 'must run as root (it writes ' . CONFIG_FILE . ')');
}

$in = clonepool_read_kv($tool, ['db_password'], ['site_url', 'table_prefix']);
if (isset($in['site_url'])) {
    clonepool_parse_site_url($tool, $in['site_url']);
}
$prefix = $in['table_prefix'] ?? 'wp_';
if (!preg_match('/^[A-Za-z0-9_]{1,32}$/', $prefix)) {
    clonepool_fail($tool, 'table_prefix may hold only letters, digits and _', CLONEPOOL_EXIT_BAD_INPUT);
}
if (preg_match('/[\x00-\x1f\x7f]/', $in['db_password'])) {
    clonepool_fail($tool, 'db_password contains control characters', CLONEPOOL_EXIT_BAD_INPUT);
}

/** 64 characters from WordPress's own salt alphabet, drawn from /dev/urandom without bias. */
function random_salt($urandom): string
{
    $alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!@#$%^&*()-_ []{}<>~`+=,.;:/?|';
    $n = strlen($alphabet); // 92
    $limit = 256 - (256 % $n);
    $out = '';
    while (strlen($out) < 64) {
        $bytes = fread($urandom, 128);
        if ($bytes === false || $bytes === '') {
            clonepool_fail('clonepool-wp-config', 'cannot read /dev/urandom');
        }
        foreach (str_split($bytes) as $byte) {
            $v = ord($byte);
            if ($v < $limit && strlen($out) < 64) {
                $out .= $alphabet[$v % $n];
            }
        }
    }
    return $out;
}

function posix_getuid_or_null(): ?int
{
    // Works with `php -n` (no posix extension): /proc tells the real uid.
    $status = @file_get_contents('/proc/self/status');
    if ($status !== false && preg_match('/^Uid:\s+(\d+)/m', $status, $m)) {
        return (int) $m[1];
    }
    return null;
}

$urandom = fopen('/dev/urandom', 'rb');
if ($urandom === false) {
    clonepool_fail($tool, 'cannot open /dev/urandom');
}
$defines = [
    'DB_NAME' => 'wordpress',
    'DB_USER' => 'wordpress',
    'DB_PASSWORD' => $in['db_password'],
    'DB_HOST' => '127.0.0.1:3306',
    'DB_CHARSET' => 'utf8mb4',
    'DB_COLLATE' => '',
];
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY',
          'AUTH_SALT', 'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as $name) {
    $defines[$name] = random_salt($urandom);
}
fclose($urandom);
$defines += [
    'WP_CONTENT_DIR' => '/var/lib/wordpress/wp-content',
    'FS_METHOD' => 'direct',
    'DISABLE_WP_CRON' => true,
    'WP_ENVIRONMENT_TYPE' => 'local',
    'AUTOMATIC_UPDATER_DISABLED' => true,
    // A clone calls nobody: no update checks, feeds or pings to the outside world. Requests to
    // the site's own host and to localhost stay allowed.
    'WP_HTTP_BLOCK_EXTERNAL' => true,
];

$php = "<?php\n"
    . "// Written by clonepool-wp-config for this clone only; rewritten on every reset.\n"
    . "// WP_HOME and WP_SITEURL are deliberately absent: the site URL lives in the database.\n";
foreach ($defines as $name => $value) {
    $php .= 'define(' . var_export($name, true) . ', ' . var_export($value, true) . ");\n";
}
$php .= '$table_prefix = ' . var_export($prefix, true) . ";\n";

// Write next to the target and rename, so Apache never reads a half-written file.
$tmp = CONFIG_DIR . '/.config-default.php.' . getmypid() . '.tmp';
$fh = fopen($tmp, 'xb');
if ($fh === false) {
    clonepool_fail($tool, "cannot create $tmp");
}
chmod($tmp, 0600);
if (fwrite($fh, $php) !== strlen($php) || !fflush($fh) || !fclose($fh)) {
    @unlink($tmp);
    clonepool_fail($tool, "cannot write $tmp");
}
if (!chgrp($tmp, 'www-data') || !chmod($tmp, 0640) || !rename($tmp, CONFIG_FILE)) {
    @unlink($tmp);
    clonepool_fail($tool, 'cannot install ' . CONFIG_FILE);
}
fwrite(STDERR, "$tool: wrote " . CONFIG_FILE . " with fresh keys and salts\n");
