import { Body, Controller, Get, Injectable, Module, NotFoundException, Param, ParseUUIDPipe, Patch, UseGuards } from '@nestjs/common';
import { Transform } from 'class-transformer';
import { IsOptional, IsString, IsUrl, Length, MaxLength, ValidateIf } from 'class-validator';
import { AuthGuard, AuthUser, CurrentUser } from '../auth/auth.guard';
import { Db } from '../infra/infra.module';
import { publicUserView, UserRow, userView } from './user.view';

const trim = ({ value }: { value: unknown }) => (typeof value === 'string' ? value.trim() : value);

export class UpdateProfileDto {
  @IsOptional()
  @Transform(trim)
  @IsString()
  @Length(1, 64)
  displayName?: string;

  // null clears the field
  @ValidateIf((_, v) => v !== null && v !== undefined)
  @IsUrl({ protocols: ['https', 'http'], require_protocol: true })
  @MaxLength(2048)
  avatarUrl?: string | null;

  @ValidateIf((_, v) => v !== null && v !== undefined)
  @IsString()
  @MaxLength(500)
  bio?: string | null;
}

@Injectable()
export class UsersService {
  constructor(private readonly db: Db) {}

  async get(id: string): Promise<UserRow> {
    const user = await this.db.one<UserRow>('SELECT * FROM legacy.users WHERE id = $1', [id]);
    if (!user) throw new NotFoundException('User not found');
    return user;
  }

  async update(id: string, dto: UpdateProfileDto): Promise<UserRow> {
    const user = await this.db.one<UserRow>(
      `UPDATE legacy.users SET
         display_name = COALESCE($2, display_name),
         avatar_url = CASE WHEN $3 THEN $4 ELSE avatar_url END,
         bio = CASE WHEN $5 THEN $6 ELSE bio END,
         updated_at = now()
       WHERE id = $1 RETURNING *`,
      [id, dto.displayName ?? null, dto.avatarUrl !== undefined, dto.avatarUrl ?? null, dto.bio !== undefined, dto.bio ?? null],
    );
    if (!user) throw new NotFoundException('User not found');
    return user;
  }
}

@Controller('users')
@UseGuards(AuthGuard)
export class UsersController {
  constructor(private readonly users: UsersService) {}

  @Get('me')
  async me(@CurrentUser() me: AuthUser) {
    return userView(await this.users.get(me.id));
  }

  @Patch('me')
  async update(@CurrentUser() me: AuthUser, @Body() dto: UpdateProfileDto) {
    return userView(await this.users.update(me.id, dto));
  }

  @Get(':id')
  async get(@Param('id', new ParseUUIDPipe()) id: string) {
    return publicUserView(await this.users.get(id));
  }
}

@Module({ controllers: [UsersController], providers: [UsersService], exports: [UsersService] })
export class UsersModule {}
